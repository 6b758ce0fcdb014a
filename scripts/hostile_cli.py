"""Try the command line as a hostile user would, in real subprocesses, and print the table of docs/reliability.md.

    python scripts/hostile_cli.py                # ~10 minutes on 2 cores: every bad-input class, kills, damage
    python scripts/hostile_cli.py --kills 3      # fewer kill -9 rounds

Every bad-input class of tests/cli/test_cli_errors.py runs as `python -m explainrec.cli ...`; a row records the exit
code, the first line on stderr, whether a traceback appeared and whether the run folder the command was pointed at
changed. Then: kill -9 at random moments of a real training run, each followed by --resume, the final model compared
with an uninterrupted run; and damaged checkpoints / model folders.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cli"))
from test_cli_errors import DATA, FAILURES, TRAIN, USAGE  # noqa: E402  (the same cases as the tests)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explainrec.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def fixtures(root: Path) -> None:
    for args in (("train", "gavamoe", "--data", DATA, "--out", root / "g", "--config", "tiny"),
                 ("train", "vae-gmm", "--data", DATA, "--out", root / "v", "--config", "tiny")):
        done = cli(*args)
        assert done.returncode == 0, done.stderr[-2000:]
    (root / "data.jsonl").write_text("".join(json.dumps({"user": f"u{i % 5}", "item": f"i{i % 7}", "split": s,
                                                         "explanation": "Nice."}) + "\n"
                                             for i, s in enumerate(["train"] * 20 + ["valid"] * 5 + ["test"] * 5)))
    (root / "file.txt").write_text("not a folder\n")
    (root / "preds").mkdir()
    (root / "preds" / "p.jsonl").write_text(json.dumps({"prediction": "a", "reference": "b"}) + "\n")
    (root / "broken.jsonl").write_text('{"user": 1, "item": 2}\n{broken\n')
    (root / "peter" / "1").mkdir(parents=True)
    (root / "peter" / "reviews.pickle").write_bytes(b"\x80\x04N.")


def bad_inputs(root: Path) -> list[dict]:
    rows = []
    for kind, cases, code in (("usage", USAGE, 2), ("failure", FAILURES, 1)):
        for name, args, expected in cases:
            new = Path(tempfile.mkdtemp(dir=root)) / "new"
            argv = [a.format(root=root, new=new) for a in args]
            before = snapshot(root / "g")
            t = time.perf_counter()
            done = cli(*argv)
            err = [x for x in done.stderr.splitlines() if x.strip()]
            first = next((x for x in err if x.startswith(("error:", "Error", "│ Invalid", "│ Missing"))), err[0] if err else "")
            rows.append({"class": name, "kind": kind, "command": "explainrec " + " ".join(argv).replace(str(root), "R"),
                         "exit": done.returncode, "expected_exit": code, "message": first.strip("│ ").strip(),
                         "expected": expected, "traceback": "Traceback" in done.stderr + done.stdout,
                         "silent": done.returncode == 0, "run_changed": snapshot(root / "g") != before,
                         "seconds": round(time.perf_counter() - t, 1)})
    return rows


def weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def _step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def kills(root: Path, rounds: int, seed: int) -> list[dict]:
    """kill -9 at a random step of a training run, then --resume; repeated; the end equals an uninterrupted run."""
    import torch

    cmd = ["train", "gavamoe", "--data", DATA, "--config", "tiny", "max_steps=300", "epochs=10", "checkpoint_every=1"]
    assert cli(*cmd, "--out", root / "full").returncode == 0
    run, rng, rows = root / "killed", random.Random(seed), []
    for i in range(rounds):
        resume = ["--resume"] if (run / "config.yaml").exists() else []
        proc = subprocess.Popen([sys.executable, "-m", "explainrec.cli", *cmd, "--out", str(run), *resume],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill once the run is past a random step (start-up takes seconds, more on a loaded machine), then a random
        # fraction of a step later, so kills land inside steps and inside checkpoint writes alike
        target = _step(run) + rng.randint(5, 60)
        t0 = time.perf_counter()
        while _step(run) < target and proc.poll() is None and time.perf_counter() - t0 < 600:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        delay = time.perf_counter() - t0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        rows.append({"round": i + 1, "killed_after_s": round(delay, 1), "checkpoint_step": _step(run),
                     "model_written": (run / "model").exists(), "leftover_tmp": len(list(run.glob(".*.tmp")))})
        if (run / "model").exists():
            break
    # a kill before the run wrote its config.yaml leaves nothing to resume: the run is then simply started again
    final = cli(*cmd, "--out", run, *(["--resume"] if (run / "config.yaml").exists() else []))
    same = False
    if final.returncode == 0:
        a, b = weights(root / "full"), weights(run)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows.append({"round": "resume to the end", "exit": final.returncode, "equals_uninterrupted": same,
                 "stderr_tail": final.stderr[-300:] if final.returncode else ""})
    return rows


def damage(root: Path) -> list[dict]:
    rows = []

    def case(name, setup, args, expected):
        run = root / f"dmg-{len(rows)}"
        shutil.copytree(root / "g", run)
        target = setup(run)
        before = target.read_bytes() if target and target.exists() else None
        done = cli(*[a.format(run=run) for a in args])
        err = [x for x in done.stderr.splitlines() if x.startswith("error:")]
        said = err[0] if err else ("finished (exit 0)" if done.returncode == 0 else done.stderr[-200:])
        rows.append({"case": name, "exit": done.returncode, "message": said,
                     "expected": expected, "traceback": "Traceback" in done.stderr,
                     "kept": before is None or (target.exists() and target.read_bytes() == before)})

    def nan_bytes(path):
        data = bytearray(path.read_bytes())
        data[-4:] = b"\x00\x00\xc0\x7f"
        path.write_bytes(bytes(data))
        return path

    def truncate(path):
        path.write_bytes(path.read_bytes()[:100])
        return path

    def no_marker(run):
        (run / "checkpoint" / "COMPLETE").unlink()
        return run / "checkpoint" / "model.safetensors"

    resume = list(TRAIN) + ["--out", "{run}", "--resume", "max_steps=4"]
    case("checkpoint weights overwritten (NaN)", lambda r: nan_bytes(r / "checkpoint" / "model.safetensors"), resume,
         "contents changed")
    case("checkpoint without COMPLETE", no_marker, resume, "missing completion marker")
    case("optimizer state truncated", lambda r: truncate(r / "checkpoint" / "optimizer.safetensors"), resume,
         "contents changed")

    def crashed_between_renames(r):
        os.replace(r / "checkpoint", r / ".checkpoint.old")  # what a kill between the two renames leaves
        return None

    case("crash between the two renames of a save", crashed_between_renames, resume, "(resumes)")
    case("model weights overwritten", lambda r: nan_bytes(r / "model" / "model.safetensors"),
         ["explain", "--model", "{run}", "--user", "u1", "--item", "i1"], "contents changed")
    def no_manifest(run):
        (run / "model" / "explainrec.json").unlink()
        return None

    case("model manifest deleted", no_manifest, ["explain", "--model", "{run}", "--user", "u1", "--item", "i1"],
         "not a run or model folder")
    return rows


def markdown(bad: list[dict], killed: list[dict], damaged: list[dict]) -> str:
    ok = [r for r in bad if r["exit"] == r["expected_exit"] and not r["traceback"] and r["expected"] in r["message"]
          and not r["run_changed"]]
    lines = [f"**Bad input: {len(bad)} classes; {len(ok)} ended as expected; "
             f"{sum(r['traceback'] for r in bad)} tracebacks; {sum(r['silent'] for r in bad)} silent successes; "
             f"{sum(r['run_changed'] for r in bad)} existing runs changed.**", "",
             "| class | exit | first line of the error | command (R = the scratch folder) |", "|---|---:|---|---|"]
    for r in bad:
        mark = "" if r in ok else " ✗"
        lines.append(f"| {r['class']}{mark} | {r['exit']} | {r['message'][:140].replace('|', '/')} | "
                     f"`{r['command'][:160]}` |")
    lines += ["", "**kill -9 during training, then `--resume`:**", "", "| round | killed after | checkpoint at step | "
              "model written | leftover temp folders |", "|---|---:|---:|---|---:|"]
    for r in killed[:-1]:
        lines.append(f"| {r['round']} | {r['killed_after_s']} s | {r['checkpoint_step']} | {r['model_written']} | "
                     f"{r['leftover_tmp']} |")
    end = killed[-1]
    lines += ["", f"Resumed to the end: exit {end['exit']}, final weights equal to an uninterrupted run: "
              f"**{end['equals_uninterrupted']}**.", "", "**Damaged files:**", "",
              "| case | exit | message | damaged file left as it was |", "|---|---:|---|---|"]
    for r in damaged:
        lines.append(f"| {r['case']} | {r['exit']} | {r['message'][:150].replace('|', '/')} | {r['kept']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixtures(root)
        damaged = damage(root)  # the quick part first: a failure here shows before the long kill rounds
        bad = bad_inputs(root)
        killed = kills(root, args.kills, args.seed)
    if args.json:
        args.json.write_text(json.dumps({"bad_inputs": bad, "kills": killed, "damage": damaged}, indent=1))
    print(markdown(bad, killed, damaged))


if __name__ == "__main__":
    main()
