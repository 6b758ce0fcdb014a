"""Try the command line as a hostile user would, in real subprocesses, and print the tables of docs/reliability.md.

    python scripts/hostile_cli.py                # ~15 minutes on 2 cores: every class below
    python scripts/hostile_cli.py --kills 3      # fewer kill -9 rounds

Every bad-input class of tests/cli/test_cli_errors.py runs as `python -m explainrec.cli ...`; a row records the exit
code, the first line on stderr, whether a traceback appeared and whether any file of the scratch folder (the trained
run, the data, the user's notes) changed, byte for byte. Then: kill -9 at random moments of a real training run,
each followed by --resume, the final model compared with an uninterrupted run; SIGINT and SIGTERM mid-training (the
checkpoint each writes, --resume to the end); two writers on one run folder and a dead writer's lock; explain over a
split stopped by kill -9 and by SIGINT, then --resume, compared with an uninterrupted file; and damaged checkpoints
/ model folders.
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
from test_cli_errors import DATA, FAILURES, TRAIN, USAGE, build_fixtures  # noqa: E402  (the tests' cases)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, timeout: float = 900, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explainrec.cli", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def snapshot(folder: Path, skip: tuple[Path, ...] = ()) -> dict:
    """Every file under ``folder`` (but those under ``skip``) with the hash of its bytes."""
    import hashlib

    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if not any(s == p or s in p.parents for s in skip)}


def fixtures(root: Path) -> None:
    build_fixtures(root, lambda *args: cli(*args).returncode)  # the tests' scratch folder, made by subprocesses
    (root / "broken.jsonl").write_text('{"user": 1, "item": 2}\n{broken\n')
    (root / "peter" / "1").mkdir(parents=True)
    (root / "peter" / "reviews.pickle").write_bytes(b"\x80\x04N.")


def bad_inputs(root: Path) -> list[dict]:
    rows = []
    for kind, cases, code in (("usage", USAGE, 2), ("failure", FAILURES, 1)):
        for name, args, expected in cases:
            scratch = Path(tempfile.mkdtemp(dir=root))
            new = scratch / "new"
            argv = [a.format(root=root, new=new) for a in args]
            skip = (scratch, *(p for p in root.iterdir() if p.name.startswith("tmp")))
            before = snapshot(root, skip)
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as cwd:  # the current folder: outside the scratch folder
                done = cli(*argv, cwd=Path(cwd))
            err = [x for x in done.stderr.splitlines() if x.strip()]
            first = next((x for x in err if x.startswith(("error:", "Error", "│ Invalid", "│ Missing"))), err[0] if err else "")
            rows.append({"class": name, "kind": kind, "command": "explainrec " + " ".join(argv).replace(str(root), "R"),
                         "exit": done.returncode, "expected_exit": code, "message": first.strip("│ ").strip(),
                         "expected": expected, "traceback": "Traceback" in done.stderr + done.stdout,
                         "silent": done.returncode == 0, "run_changed": snapshot(root, skip) != before,
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


def signals(root: Path) -> list[dict]:
    """SIGINT and SIGTERM after step 8 of a run that checkpoints only every 1000 steps: the checkpoint it writes at
    the stop, the exit code and message, then --resume to the end against an uninterrupted run."""
    import torch

    cmd = ["train", "gavamoe", "--data", DATA, "--config", "tiny", "max_steps=30", "checkpoint_every=1000",
           "log_every=1"]
    assert cli(*cmd, "--out", root / "sig-full").returncode == 0
    rows = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        run = root / f"sig-{sig.name}"
        proc = subprocess.Popen([sys.executable, "-m", "explainrec.cli", *cmd, "--out", str(run)], text=True,
                                env={**ENV, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sent_at = None
        for line in proc.stdout:
            if line.startswith("[gavamoe] step ") and int(line.split()[2]) >= 8:
                sent_at = int(line.split()[2])
                proc.send_signal(sig)
                break
        _, err = proc.communicate(timeout=600)
        message = next((x for x in err.splitlines() if x.startswith("error:")), err[-200:])
        resumed = cli(*cmd, "--out", run, "--resume")
        said = next((x for x in resumed.stdout.splitlines() if "resumed from" in x), "")
        same = False
        if resumed.returncode == 0:
            a, b = weights(root / "sig-full"), weights(run)
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        rows.append({"signal": sig.name, "sent_after_step": sent_at, "exit": proc.returncode, "message": message,
                     "resume_said": said.strip(), "resume_exit": resumed.returncode, "equals_uninterrupted": same})
    return rows


def writers(root: Path) -> list[dict]:
    """A second writer while a process holds a run folder's lock (train --resume, train --overwrite, explain of
    the run still training), then a lock left by a process that died holding it."""
    run = root / "w"
    shutil.copytree(root / "g", run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from explainrec.folders import writer_lock\n"
                               "with writer_lock(sys.argv[1], command='explainrec train gavamoe --out w'):\n"
                               "    print('held', flush=True); time.sleep(600)", str(run)],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "held"
    rows = []
    try:
        before = snapshot(run)
        for name, args in (("--resume while it trains", (*TRAIN, "--out", run, "--resume")),
                           ("a second train --overwrite", (*TRAIN, "--out", run, "--overwrite")),
                           ("two benches on one output", ("bench", root / "bench.yaml"))):
            if name.startswith("two benches"):
                (root / "bench.yaml").write_text(json.dumps({"out": str(run), "datasets": {"s": DATA},
                                                             "runs": {"z": {"method": "zero-shot"}}}))
            done = cli(*args)
            err = next((x for x in done.stderr.splitlines() if x.startswith("error:")), done.stderr[-200:])
            rows.append({"case": name, "exit": done.returncode, "message": err,
                         "names_pid": f"pid {holder.pid}" in err, "run_changed": snapshot(run) != before})
    finally:
        holder.kill()
        holder.wait()
    (run / ".explainrec.lock").write_text(json.dumps({"pid": holder.pid, "command": "explainrec train gavamoe --out w",
                                                      "since": time.time() - 60}))
    done = cli(*TRAIN, "--out", run, "--resume", "max_steps=40")
    note = next((x for x in done.stderr.splitlines() if "took over" in x), "")
    rows.append({"case": "the holder died: --resume", "exit": done.returncode, "message": note.strip(),
                 "names_pid": f"pid {holder.pid}" in note, "run_changed": True})
    return rows


def explain_stops(root: Path) -> list[dict]:
    """explain over a split (zero-shot tiny, chunks of 2) stopped after its second chunk by kill -9 and by SIGINT,
    then --resume; the file compared with an uninterrupted run's."""
    cmd = ["explain", "--method", "zero-shot", "--model", "tiny", "--data", DATA, "--chunk-size", "2",
           "--batch-size", "2", "--precision", "fp32", "--max-new-tokens", "40"]
    full = root / "explain-full.jsonl"
    assert cli(*cmd, "--out", full).returncode == 0
    rows = []
    for sig in (signal.SIGKILL, signal.SIGINT):
        out = root / f"explain-{sig.name}.jsonl"
        parts = out.with_name(out.name + ".parts")
        proc = subprocess.Popen([sys.executable, "-m", "explainrec.cli", *cmd, "--out", str(out)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        while len(list(parts.glob("chunk-*.jsonl"))) < 2 and proc.poll() is None and time.perf_counter() - t0 < 300:
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        kept = len(list(parts.glob("chunk-*.jsonl")))
        resumed = cli(*cmd, "--out", out, "--resume")
        rows.append({"signal": sig.name, "exit": proc.returncode, "chunks_kept": kept,
                     "message": next((x for x in err.splitlines() if x.startswith("error:")), ""),
                     "resume_exit": resumed.returncode,
                     "identical": resumed.returncode == 0 and out.read_bytes() == full.read_bytes()})
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


def markdown(bad: list[dict], killed: list[dict], damaged: list[dict], signalled: list[dict], two: list[dict],
             stopped: list[dict]) -> str:
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
    lines += ["", "**SIGINT / SIGTERM during training (checkpoints every 1000 steps), then `--resume`:**", "",
              "| signal | sent after step | exit | message | `--resume` says | final weights equal an uninterrupted "
              "run |", "|---|---:|---:|---|---|---|"]
    for r in signalled:
        lines.append(f"| {r['signal']} | {r['sent_after_step']} | {r['exit']} | {r['message'][:170]} | "
                     f"{r['resume_said'][:90]} | {r['equals_uninterrupted']} |")
    lines += ["", "**Two writers on one run folder (a live process holds its lock), then a dead holder's lock:**", "",
              "| case | exit | message | names the holder's pid | run changed |", "|---|---:|---|---|---|"]
    for r in two:
        lines.append(f"| {r['case']} | {r['exit']} | {r['message'][:160]} | {r['names_pid']} | "
                     f"{r['run_changed'] if r['exit'] else '(resumed: it trains)'} |")
    lines += ["", "**explain over a split stopped after its second chunk, then `--resume`:**", "",
              "| signal | exit | chunks kept | message | resume exit | file identical to an uninterrupted run |",
              "|---|---:|---:|---|---:|---|"]
    for r in stopped:
        lines.append(f"| {r['signal']} | {r['exit']} | {r['chunks_kept']} | {r['message'][:150]} | "
                     f"{r['resume_exit']} | {r['identical']} |")
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
        two = writers(root)
        stopped = explain_stops(root)
        signalled = signals(root)
        killed = kills(root, args.kills, args.seed)
    if args.json:
        args.json.write_text(json.dumps({"bad_inputs": bad, "kills": killed, "damage": damaged, "signals": signalled,
                                         "writers": two, "explain_stops": stopped}, indent=1))
    print(markdown(bad, killed, damaged, signalled, two, stopped))


if __name__ == "__main__":
    main()
