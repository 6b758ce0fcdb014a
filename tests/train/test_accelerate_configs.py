"""The accelerate config files in configs/accelerate/: each parses, and accelerate's launcher takes it (the same
validation `accelerate launch --config_file F` runs before it starts any process) with the settings its header
promises. What runs under them on this CPU machine is in tests/train/test_explain_multiprocess.py (data parallel)
and docs/scale.md (FSDP and DeepSpeed: what could and could not be checked here)."""
from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _launcher_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "--num_processes", "2",
                                               "-m", "explainrec.cli", "train", "gavamoe"])
    return _validate_launch_command(args)[0]


def test_every_config_file_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["data-parallel", "deepspeed-zero3", "fsdp"]


def test_data_parallel_is_the_torchrun_launcher_with_one_process_per_slot():
    args = _launcher_args("data-parallel")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed and args.num_processes == 2
    assert not args.cpu  # --cpu would make accelerate start one process only


def test_fsdp_shards_every_decoder_layer_of_the_llama_and_saves_one_full_state_dict():
    import transformers

    args = _launcher_args("fsdp")
    assert args.use_fsdp and args.fsdp_version == 2 and args.fsdp_reshard_after_forward in (True, "true")
    assert args.fsdp_auto_wrap_policy == "TRANSFORMER_BASED_WRAP"
    assert hasattr(transformers.models.llama.modeling_llama, args.fsdp_transformer_layer_cls_to_wrap)
    assert args.fsdp_state_dict_type == "FULL_STATE_DICT"


def test_deepspeed_zero3_is_taken_and_builds_a_stage_3_plugin_without_deepspeed_installed():
    from accelerate.utils import DeepSpeedPlugin

    args = _launcher_args("deepspeed-zero3")
    assert args.use_deepspeed and int(args.zero_stage) == 3 and args.zero3_init_flag in (True, "true")
    plugin = DeepSpeedPlugin(zero_stage=int(args.zero_stage), zero3_init_flag=False,
                             offload_optimizer_device=args.offload_optimizer_device,
                             offload_param_device=args.offload_param_device,
                             zero3_save_16bit_model=args.zero3_save_16bit_model in (True, "true"))
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "none"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("preset", ["paper"])
def test_the_paper_presets_these_files_train_exist(preset):
    from explainrec.methods import registry

    for name in ("gavamoe", "xrec"):
        assert preset in registry.get(name).presets()
