"""ssmlit: deep diagonal state space models (S4D, S5) with LAST / AIRE state pruning."""

__version__ = "0.1.0"
