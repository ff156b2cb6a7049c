"""Launching as Hydra users do: multirun (one subdirectory per job), the SLURM launcher config, and the
TensorBoard HPARAMS record that lets runs of a multirun be compared side by side."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ssmlit.training.launch import flat_config, hparam_metrics
from ssmlit.utils import config_dir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=8", "model.n_layers=1", "model.ssm.d_state=8", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1"]


def hparams_of(tb_dir: Path) -> tuple[dict, set[str]]:
    """(hyper-parameters, hparam metric names) recorded in a TensorBoard run folder."""
    acc = EventAccumulator(str(tb_dir), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    hp = {k: v.string_value or v.number_value or v.bool_value for k, v in start.session_start_info.hparams.items()}
    return hp, {m.name.tag for m in exp.experiment.metric_infos}


def test_multirun_gives_each_job_its_own_directory_results_and_hparams(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"hydra.sweep.dir={tmp_path}", "+prune=last",
           "prune.ratio=0.25,0.5", "prune.plots=false", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job, ratio in (("0", 0.25), ("1", 0.5)):
        run = tmp_path / job
        assert OmegaConf.load(run / ".hydra" / "config.yaml").prune.ratio == ratio
        results = json.loads((run / "results.json").read_text())
        assert results["pruning"]["achieved_ratio"] == ratio  # 1 layer × 4 pairs: 0.25 and 0.5 are exact
        assert Path(results["best_checkpoint"]).parent == run / "checkpoints"
        hp, metrics = hparams_of(run / "tb")
        assert hp["prune.ratio"] == ratio and hp["model.d_model"] == 8 and hp["task._target_"].endswith("DataModule")
        assert {"hp/test_acc", "hp/val_acc", "hp/pruned_test_acc", "hp/pruned_ratio"} <= metrics


def test_hparams_cover_the_whole_composed_config():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["+prune=aire", "model=s4d", "hydra.runtime.output_dir=/runs/x"],
                      return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what a Hydra job has (logger.save_dir interpolates it)
    try:
        flat = flat_config(cfg)
    finally:  # a Hydra config left set would give later tests in this process a run dir of /runs/x
        HydraConfig.instance().cfg = None
    for group in ("task", "model", "optim", "prune", "trainer"):
        assert any(k.startswith(group + ".") for k in flat), group
    assert flat["model.layer"] == "s4d" and flat["prune.method"] == "aire" and flat["optim.betas"] == "[0.9, 0.999]"
    assert flat["resume"] == "null" and flat["logger.save_dir"] == "/runs/x"
    assert not any(k.startswith("hydra") for k in flat)
    results = {"test/acc": 0.9, "best_val": 0.8, "pruned/test/acc": 0.7, "pruning": {"achieved_ratio": 0.3},
               "wall_time_s": 3.0}
    assert hparam_metrics(results) == {"hp/test_acc": 0.9, "hp/best_val": 0.8, "hp/pruned_test_acc": 0.7,
                                       "hp/pruned_ratio": 0.3}


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm"])
def test_slurm_launcher_composes_from_the_trainer(launcher):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "trainer=ddp", "trainer.devices=4",
                                           "trainer.num_nodes=2", "+prune=last", "prune.ratio=0.1"],
                      return_hydra_config=True)
    launcher_cfg = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher_cfg["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    if launcher == "slurm":  # ours: the job shape follows the DDP trainer
        assert (launcher_cfg["nodes"], launcher_cfg["tasks_per_node"], launcher_cfg["gpus_per_node"]) == (2, 4, 4)
