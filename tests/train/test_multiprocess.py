"""The shared training loop under two data-parallel CPU processes (accelerate's gloo launcher), as
`accelerate launch --num_processes 2` would run it: both processes step together and only the main one writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from explainrec.data import make_synthetic
from explainrec.methods.gavamoe.modeling import MoEConfig
from explainrec.methods.gavamoe.recipe import TrainConfig, train

OUT_ENV = "EXPLAINREC_TEST_MP_OUT"


def _train_in_process() -> None:
    """Runs in every launched process."""
    import torch

    torch.set_num_threads(1)
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    cfg = TrainConfig(model="tiny", clusters=2, batch_size=2, lr=1e-3, max_steps=3, max_minutes=60.0, log_every=1,
                      stage1=dict(epochs=1, pretrain_epochs=1, batch_size=512, plot_method="none", embed_dim=16,
                                  latent_dim=8, progress=False),
                      moe=MoEConfig(n_experts=4, top_k=2, granularity=2))
    out = Path(os.environ[OUT_ENV])
    summary = train(data, out / "run", cfg, progress_bar=False, echo=lambda *_: None)
    from accelerate import PartialState

    rank = PartialState().process_index
    (out / f"rank{rank}.json").write_text(json.dumps({"steps": summary["steps"]}))


def test_two_processes_train_in_step_and_save_once(tmp_path):
    # stage 1 first, in this process, so the two workers share one clustering instead of racing to write it
    from explainrec.methods.gavamoe.stage1 import fit_clusters

    (tmp_path / "run").mkdir()
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    fit_clusters(data, 2, tmp_path / "run" / "stage1", epochs=1, pretrain_epochs=1, batch_size=512, plot_method="none",
                 embed_dim=16, latent_dim=8, progress=False)
    # The launcher forks; forking this pytest process, whose OpenMP threads are already running, can deadlock the
    # workers. A fresh interpreter that forks before any torch work is safe, and a timeout keeps a hang from
    # stalling the suite.
    code = ("import runpy; from accelerate import debug_launcher; "
            f"debug_launcher(runpy.run_path({str(Path(__file__))!r})['_train_in_process'], num_processes=2)")
    env = {**os.environ, OUT_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads((tmp_path / f"rank{r}.json").read_text())["steps"] for r in (0, 1)]
    assert steps == [3, 3]
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert (tmp_path / "run" / "train_summary.json").exists()
