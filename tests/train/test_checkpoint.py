"""Checkpoints: exact round trip (weights, optimizer, RNG, generators), and clear errors naming the bad file."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from explainrec.training.checkpoint import (
    CheckpointError,
    is_complete,
    load_checkpoint,
    load_extra_tensors,
    read_checkpoint_config,
    save_checkpoint,
)


def _model(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))


def _step(model, opt, n: int = 3) -> None:
    for _ in range(n):
        loss = model(torch.randn(8, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_round_trip_restores_training_exactly(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    gen = torch.Generator().manual_seed(7)
    _step(model, opt)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, state={"epoch": 3, "history": [1.5]},
                    extra_tensors={"best.w": torch.arange(4.0)}, config={"lr": 1e-2, "model": {"width": 4}},
                    generators={"data": gen})
    assert is_complete(tmp_path / "ck")
    # continue the original: 3 more steps and some draws from every RNG
    _step(model, opt)
    expected = ([p.detach().clone() for p in model.parameters()],
                torch.randn(2), np.random.rand(), random.random(), torch.rand(2, generator=gen))

    model2 = _model()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)  # different weights, to be overwritten
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2, betas=(0.8, 0.95))
    gen2 = torch.Generator().manual_seed(123)
    state = load_checkpoint(tmp_path / "ck", model=model2, optimizer=opt2, expected_config={"lr": 1e-2, "model": {"width": 4}},
                            generators={"data": gen2})
    assert state == {"epoch": 3, "history": [1.5]}
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)  # tuples survive JSON
    _step(model2, opt2)
    got = ([p.detach() for p in model2.parameters()], torch.randn(2), np.random.rand(), random.random(),
           torch.rand(2, generator=gen2))
    for a, b in zip(expected[0], got[0]):
        assert torch.equal(a, b)
    assert torch.equal(expected[1], got[1]) and expected[2] == got[2] and expected[3] == got[3]
    assert torch.equal(expected[4], got[4])
    assert torch.equal(load_extra_tensors(tmp_path / "ck")["best.w"], torch.arange(4.0))
    assert read_checkpoint_config(tmp_path / "ck")["model"] == {"width": 4}


def test_no_pickle_anywhere(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _step(model, opt, 1)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, state={"epoch": 1})
    for f in (tmp_path / "ck").iterdir():
        head = f.read_bytes()[:2]
        assert head != b"\x80\x04" and head != b"PK", f"{f.name} looks like a pickle / torch.save archive"
    json.loads((tmp_path / "ck" / "optimizer.json").read_text())


def test_overwrite_is_atomic_and_keeps_a_whole_folder(tmp_path):
    model = _model()
    save_checkpoint(tmp_path / "ck", model=model, state={"epoch": 1})
    save_checkpoint(tmp_path / "ck", model=model, state={"epoch": 2})
    assert load_checkpoint(tmp_path / "ck", model=_model()) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folders left behind


def test_missing_folder_and_missing_marker(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        load_checkpoint(tmp_path / "nope", model=_model())
    save_checkpoint(tmp_path / "ck", model=_model(), state={})
    (tmp_path / "ck" / "COMPLETE").unlink()
    with pytest.raises(CheckpointError, match="COMPLETE.*missing completion marker"):
        load_checkpoint(tmp_path / "ck", model=_model())


def test_missing_file_is_named(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(), state={})
    (tmp_path / "ck" / "rng.json").unlink()
    with pytest.raises(CheckpointError, match=r"rng\.json: file listed in COMPLETE is missing"):
        load_checkpoint(tmp_path / "ck", model=_model())


def test_corrupt_weights_are_named(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(), state={})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: contents changed .*checksum"):
        load_checkpoint(tmp_path / "ck", model=_model())


def test_overwritten_tensor_bytes_are_caught_before_resuming(tmp_path):
    """Bytes changed in place (still a readable safetensors file, e.g. NaNs written over the weights) would resume
    into garbage; the checksum in COMPLETE refuses the checkpoint instead."""
    save_checkpoint(tmp_path / "ck", model=_model(), state={})
    file = tmp_path / "ck" / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float32 becomes NaN; the header stays valid
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: contents changed"):
        load_checkpoint(tmp_path / "ck", model=_model())


def test_corrupt_state_json_is_named(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(), state={"epoch": 1})
    (tmp_path / "ck" / "state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"state\.json: contents changed"):
        load_checkpoint(tmp_path / "ck", model=_model())


def test_a_crash_between_the_two_renames_keeps_a_checkpoint(tmp_path, monkeypatch):
    """atomic_dir replaces a folder by moving the old one to .NAME.old, then the new one in; a crash in between
    leaves only .old, which the next reader (or writer) moves back."""
    import explainrec.io as io

    save_checkpoint(tmp_path / "ck", model=_model(), state={"epoch": 1})

    def crash(_path):
        raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr(io, "_between_renames", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", model=_model(), state={"epoch": 2})
    assert not (tmp_path / "ck").exists() and (tmp_path / ".ck.old").is_dir()  # the window really was hit
    assert is_complete(tmp_path / "ck")  # recovered
    assert load_checkpoint(tmp_path / "ck", model=_model()) == {"epoch": 1}
    monkeypatch.undo()
    save_checkpoint(tmp_path / "ck", model=_model(), state={"epoch": 3})
    assert load_checkpoint(tmp_path / "ck", model=_model()) == {"epoch": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_leftover_temporary_folders_are_cleaned_at_the_next_save(tmp_path):
    (tmp_path / ".ck.abc123.tmp").mkdir()  # what a writer killed mid-save leaves
    (tmp_path / ".ck.abc123.tmp" / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path / "ck", model=_model(), state={"epoch": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_wrong_shapes_are_named(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(width=4), state={})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: does not fit .*saved shape \(4, 3\) != model shape \(5, 3\)"):
        load_checkpoint(tmp_path / "ck", model=_model(width=5))


def test_optimizer_mismatch_is_named(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _step(model, opt, 1)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=opt, state={})
    with pytest.raises(CheckpointError, match=r"optimizer\.json: saved optimizer 'AdamW' != SGD"):
        load_checkpoint(tmp_path / "ck", model=_model(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    other = _model()
    two_groups = torch.optim.AdamW([{"params": list(other.parameters())[:2]}, {"params": list(other.parameters())[2:]}])
    with pytest.raises(CheckpointError, match=r"optimizer\.json: saved parameter groups \[4\] != optimizer's \[2, 2\]"):
        load_checkpoint(tmp_path / "ck", model=other, optimizer=two_groups)
    save_checkpoint(tmp_path / "ck2", model=model, state={})
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "ck2", model=_model(), optimizer=torch.optim.AdamW(_model().parameters()))


def test_config_mismatch_lists_the_keys(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(), state={}, config={"lr": 0.1, "model": {"width": 4}, "epochs": 3})
    with pytest.raises(CheckpointError, match=r"config\.json: config mismatch \(model\.width: saved 4 != expected 8\)"):
        load_checkpoint(tmp_path / "ck", model=_model(), expected_config={"lr": 0.1, "model": {"width": 8}, "epochs": 5},
                        ignore_config_keys=["epochs"])
    # ignored keys may differ
    load_checkpoint(tmp_path / "ck", model=_model(), expected_config={"lr": 0.1, "model": {"width": 4}, "epochs": 5},
                    ignore_config_keys=["epochs"])
    # a setting added since the checkpoint was written takes its current value; a removed one is a mismatch
    load_checkpoint(tmp_path / "ck", model=_model(), expected_config={"lr": 0.1, "model": {"width": 4, "depth": 2},
                                                                      "epochs": 3, "fused": True})
    with pytest.raises(CheckpointError, match=r"model\.width: saved 4 != expected '<missing>'"):
        load_checkpoint(tmp_path / "ck", model=_model(), expected_config={"lr": 0.1, "model": {}, "epochs": 3})


def test_unknown_generator_is_named(tmp_path):
    save_checkpoint(tmp_path / "ck", model=_model(), state={})
    with pytest.raises(CheckpointError, match=r"rng\.safetensors: no state for generator 'data'"):
        load_checkpoint(tmp_path / "ck", model=_model(), generators={"data": torch.Generator()})
