"""The shared training loop under two data-parallel CPU processes (accelerate's gloo launcher), as
`accelerate launch --num_processes 2` would run it: both processes step together, end with the same weights, and
only the main one writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from explainrec.data import make_synthetic

OUT_ENV = "EXPLAINREC_TEST_MP_OUT"


def _train_in_process() -> None:
    """Runs in every launched process: record every write under the run folder, train, report the weights."""
    import hashlib

    import torch
    from accelerate import PartialState

    out = Path(os.environ[OUT_ENV])
    run = str(out / "run")
    writes: list[str] = []

    def audit(event, args):  # Python-level writes (folders, renames, opened files) under the run folder
        if event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree"):
            paths = [str(a) for a in args if isinstance(a, (str, os.PathLike))]
        elif event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
            paths = [str(args[0])]
        else:
            return
        writes.extend(p for p in paths if p.startswith(run))

    sys.addaudithook(audit)
    torch.set_num_threads(1)
    from explainrec.methods import llm_method, registry
    from explainrec.methods.runs import train_run

    import explainrec.training.loop as loop

    captured = {"users": 0}
    real_fit, real_loop = llm_method.fit, loop.run_loop

    def fit_and_keep(*args, **kwargs):
        raw, state, acc = real_fit(*args, **kwargs)
        captured.update(model=raw, processes=acc.num_processes)
        return raw, state, acc

    def see_batches(model, *args, extra=None, **kwargs):  # which pairs this process trained on
        def counting(batch, gen):
            captured["users"] += int(batch["user"].sum())
            return extra(batch, gen) if extra else {}

        return real_loop(model, *args, extra=counting, **kwargs)

    llm_method.fit = fit_and_keep
    loop.run_loop = see_batches
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    gavamoe = registry.get("gavamoe")
    cfg = gavamoe.make_config("tiny", ["batch_size=2", "max_steps=3", "log_every=1"])
    trained = train_run(gavamoe, data, out / "run", cfg, resume=True, progress=False, echo=lambda *_: None)
    digest = hashlib.sha256()
    for name, p in sorted(captured["model"].named_parameters()):
        digest.update(name.encode() + p.detach().cpu().numpy().tobytes())
    rank = PartialState().process_index
    (out / f"rank{rank}.json").write_text(json.dumps({"steps": trained.summary.steps, "weights": digest.hexdigest(),
                                                      "writes": writes, "processes": captured["processes"],
                                                      "users_seen": captured["users"]}))


def test_two_processes_train_in_step_and_save_once(tmp_path):
    # stage 1 and the run folder first, in this process, so the two workers share one clustering instead of racing
    from explainrec.methods import registry
    from explainrec.methods.runs import ensure_stage, prepare_out, write_run_config

    gavamoe = registry.get("gavamoe")
    cfg = gavamoe.make_config("tiny", ["batch_size=2", "max_steps=3", "log_every=1"])
    data = make_synthetic(n_users=30, n_items=25, n_types=2, seed=5)
    prepare_out(tmp_path / "run", resume=False, overwrite=False)
    write_run_config(tmp_path / "run", gavamoe, cfg, resume=False)
    (use,) = gavamoe.stages(cfg)
    ensure_stage(use, data, tmp_path / "run", resume=False, progress=False, echo=lambda *_: None)
    # The launcher forks; forking this pytest process, whose OpenMP threads are already running, can deadlock the
    # workers. A fresh interpreter that forks before any torch work is safe, and a timeout keeps a hang from
    # stalling the suite.
    code = ("import runpy; from accelerate import debug_launcher; "
            f"debug_launcher(runpy.run_path({str(Path(__file__))!r})['_train_in_process'], num_processes=2)")
    env = {**os.environ, OUT_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [3, 3] and [r["processes"] for r in ranks] == [2, 2]
    # each process trained on its own shard of the batches, yet the replicas end equal: gradients were averaged
    assert ranks[0]["users_seen"] != ranks[1]["users_seen"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[1]["writes"] == [] and ranks[0]["writes"], ranks[1]["writes"]  # only the main process wrote
    assert any("/checkpoint" in w for w in ranks[0]["writes"]) and any("/model" in w for w in ranks[0]["writes"])
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert (tmp_path / "run" / "train_summary.json").exists()
