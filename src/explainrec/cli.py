"""The `explainrec` command line. Each command checks its options, calls one library function and prints a table.

Methods are looked up in :mod:`explainrec.methods.registry`; no command knows any method by name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from explainrec.data.schema import DataError
from explainrec.llm.decoding import GenerationConfig

from explainrec.cli_boundary import (
    DEBUG,
    UsageError,
    boundary,
    check_input_file,
    check_output_file,
    check_output_folder,
    check_run_folder,
    data_path,
    stderr_is_terminal,
)

class _Commands(typer.core.TyperGroup):
    """The command group; ``evaluate-NAME``, how a method's evaluation was once run, says what replaced it instead
    of "no such command"."""

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name.startswith("evaluate-"):
            name = cmd_name.removeprefix("evaluate-")
            ctx.fail(f"'{cmd_name}' is now `explainrec evaluate RUN --extra {name} --data DATA [KEY=VALUE ...]` "
                     f"(options as KEY=VALUE, e.g. limit=100; `explainrec methods METHOD` lists them)")
        return command


app = typer.Typer(
    cls=_Commands,
    help="LLM-based explainable recommendation: train, explain, evaluate, compare, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DATA_HELP = (
    "Dataset: 'synthetic' (built-in; 'synthetic:users=300,types=4' to change it), an XRec-style folder "
    "(explanations.jsonl + interactions.csv), a PETER folder (reviews.pickle + 1/*.index; needs --trust-pickle), "
    "or a .csv / .jsonl file with named columns."
)
TRUST_HELP = "Allow unpickling PETER's reviews.pickle. Pickles can run code: only for files you trust."
SPLIT_HELP = "Which split of --data: train, valid (or validation/val) or test."
SPECIFICITY_HELP = ("Pair retrieval (Ret-R@1/R@10/MRR, beside their chance levels): rank all references of the file by "
                    "MiniLM similarity to each prediction and see where the pair's own reference lands; a template "
                    "written for everyone scores at chance (needs the embedded encoder).")
OVERWRITE_HELP = "Replace the files this command writes when they exist (without it, an existing result is kept)."
PRECISION_HELP = ("Weights for generation: auto (int8 on CPU, the loaded dtype on a GPU), fp32, or int8 (dynamic int8 "
                  "matmuls on CPU: about 3x faster, greedy text may differ slightly).")


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of any error.")) -> None:
    DEBUG["on"] = debug


def _command_line() -> str:
    """This command as typed (what a folder's lock and ownership marker say made it)."""
    import shlex
    import sys

    return " ".join(["explainrec", *map(shlex.quote, sys.argv[1:])])


def _load_data(data: str, trust_pickle: bool, seed: int = 0):
    from explainrec.data import load_dataset

    return load_dataset(data, trust_pickle=trust_pickle, seed=seed)


# ---------------------------------------------------------------------------------------------------- data, methods


@data_app.command("stats")
@boundary
def data_stats(
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Users, items, interactions and explained pairs per split, density."""
    from explainrec.data import dataset_stats
    from explainrec.data.stats import format_stats

    stats = dataset_stats(_load_data(data, trust_pickle))
    typer.echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@app.command()
@boundary
def methods(name: Optional[str] = typer.Argument(None, help="Show one method's settings and presets.")) -> None:
    """The registered methods, one line each (with NAME: its settings, defaults and presets)."""
    from explainrec.methods import registry

    if name is None:
        width = max(len(n) for n in registry.names())
        for m in registry.all_methods():
            kind = "" if m.explains else "  [stage]"
            typer.echo(f"{m.name:<{width}}  {m.description}{kind}")
        return
    typer.echo(_method_help(registry.get(name)))


def _method_help(m) -> str:
    presets = ", ".join(m.presets()) or "none"
    text = (f"{m.name}: {m.description}\n\npresets (--config NAME): {presets}\n\n"
            f"settings (KEY=VALUE, nested keys with dots):\n{m.config_class.help_text()}")
    for e in m.evaluations:
        text += (f"\n\nevaluation {e.name} (explainrec evaluate RUN --extra {e.name} --data DATA [KEY=VALUE ...]; "
                 f"a bench runs it on every {m.name} run, options under evaluations: {{{e.name}: ...}}): "
                 f"{e.description}\n{e.options.help_text()}")
    for section in m.report_sections:
        text += f"\n\nbench report section {section.name} (experiments: {{{section.name}: [RUN, ...]}}): " \
                f"{section.description}"
    return text


# ---------------------------------------------------------------------------------------------------- train


TRAIN_USAGE = """Usage: explainrec train METHOD --data DATA --out RUN [--config PRESET|FILE] [--resume|--overwrite] [KEY=VALUE ...]

  Train a registered method (see `explainrec methods`) into the run folder RUN. Settings come from the method's
  defaults, then --config (a preset shipped with the method, e.g. tiny / cpu / paper, or a YAML file), then
  KEY=VALUE overrides (nested keys with dots: lora.r=8). RUN/config.yaml keeps the resolved settings.

Options:
  --data TEXT         {data}
  --out PATH          Run folder (model/, checkpoint/, stages, logs).
  --config TEXT       A preset name or a YAML file of settings.
  --resume            Continue the run in --out from its last checkpoint (stages included).
  --overwrite         Replace the run in --out (without it, an existing run is never touched).
  --trust-pickle      {trust}
  --help              This help; with METHOD, that method's settings.
"""


@app.command(add_help_option=False)
@boundary
def train(
    method: Optional[str] = typer.Argument(None, help="A registered method (explainrec methods)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="KEY=VALUE settings."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder."),
    config: Optional[str] = typer.Option(None, "--config", help="Preset name or YAML file."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    show_help: bool = typer.Option(False, "--help", "-h", help="Show this help."),
) -> None:
    """Train METHOD into a run folder (explainrec train METHOD --help lists its settings)."""
    from explainrec import api
    from explainrec.config import parse_overrides
    from explainrec.methods import registry

    if show_help or method is None:
        typer.echo(TRAIN_USAGE.format(data=DATA_HELP, trust=TRUST_HELP))
        typer.echo(_method_help(registry.get(method)) if method else
                   "Methods: " + ", ".join(registry.names()) + "  (explainrec train METHOD --help)")
        if method is None and not show_help:
            raise typer.Exit(2)
        return
    registry.get(method)  # an unknown method is named before the other mistakes
    if data is None or out is None:
        raise UsageError(f"train {method}: --data and --out are required (explainrec train {method} --help)")
    trained = api.train(method, data, out=out, preset=config, resume=resume, overwrite=overwrite, progress=True,
                        echo=typer.echo, trust_pickle=trust_pickle, command=_command_line(),
                        **parse_overrides(list(overrides or [])))
    typer.echo(json.dumps({k: v for k, v in trained.summary.to_dict().items() if k != "config"}, indent=2, default=str))
    typer.echo(f"wrote {out}" + (f" (model: {out / 'model'})" if (out / "model").exists() else ""))


# ---------------------------------------------------------------------------------------------------- explain


def _open_explainer(model: Optional[str], method: Optional[str], precision: str):
    """A run folder (--model RUN), or a method that needs no training built from --method (and --model LLM)."""
    from explainrec.methods import registry
    from explainrec.methods.model_folder import apply_precision, load_run

    m = registry.get(method) if method else None
    if model is not None and (m is None or m.trains):
        explainer = load_run(model, precision=precision)
        if m is not None and explainer.method != m.name:
            raise UsageError(f"--model {model} holds a {explainer.method} model, not {m.name}")
        return explainer
    m = m or registry.default_untrained()
    if m.trains:
        raise UsageError(f"--method {m.name} needs a trained run folder: pass --model RUN "
                         f"(from `explainrec train {m.name} --data DATA --out RUN`)")
    cfg = m.make_config(overrides={"model": model} if model else None, where=f"--method {m.name}")
    return apply_precision(m.untrained(cfg), precision)


@app.command()
@boundary
def explain(
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP),
    model: Optional[str] = typer.Option(
        None, "--model",
        help="A trained run folder (from `explainrec train METHOD`), or, with a method that needs no training "
        "(--method zero-shot, the default), the LLM: 'smollm2-135m' (embedded), 'tiny', an HF id or a local folder."),
    method: Optional[str] = typer.Option(None, "--method", help="A method that needs no training (zero-shot), or "
                                         "the method --model must hold."),
    user: Optional[str] = typer.Option(None, "--user", help="Explain one pair: the raw user id (with --item)."),
    item: Optional[str] = typer.Option(None, "--item", help="Explain one pair: the raw item id."),
    title: Optional[str] = typer.Option(None, "--title", help="One pair: the item's title (else from --data)."),
    user_profile: Optional[str] = typer.Option(None, "--user-profile", help="One pair: the user's profile text."),
    item_profile: Optional[str] = typer.Option(None, "--item-profile", help="One pair: the item's profile text."),
    pair_file: Optional[Path] = typer.Option(None, "--pair-file", help="One pair: a JSON object with user, item and "
                                             "optionally title, user_profile, item_profile, features, rating."),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Explain a stream of pairs instead of a split: JSON "
                                         "lines or Parquet, one pair per record (user, item, optionally title, "
                                         "user_profile, item_profile, features, rating, explanation) or a top-k list "
                                         "(user, items, optionally scores); read a chunk at a time. With --data, what "
                                         "a record leaves out is taken from the dataset. Under `accelerate launch` / "
                                         "`torchrun` each process explains its share (docs/scale.md)."),
    out: Path = typer.Option(Path("preds.jsonl"), "--out", help="Predictions file (JSON lines) to write; may be "
                             "inside the run folder (beside its model), never an input or an existing file without "
                             "--overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out (and an interrupted "
                                   "explain's chunks)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an explain of --out that was stopped (its chunks "
                                "in OUT.parts/); the same settings are required."),
    chunk_size: int = typer.Option(128, "--chunk-size", min=1, help="Pairs written per chunk (OUT.parts/, then OUT "
                                   "whole): a stop keeps every finished chunk."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Explain only the first N pairs of the split (or of --pairs)."),
    batch_size: int = typer.Option(GenerationConfig.batch_size, "--batch-size", min=1,
                                   help="Prompts generated together (sorted by length, left-padded, KV-cached)."),
    max_new_tokens: int = typer.Option(60, "--max-new-tokens", min=1, help="Longest explanation, in tokens."),
    do_sample: bool = typer.Option(False, "--sample", help="Sample (nucleus) instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (with --sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with --sample)."),
    num_beams: int = typer.Option(1, "--num-beams", min=1, help="Beam search width (1 = no beam search)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="Penalty on repeated tokens (1 = none)."),
    no_repeat_ngram_size: int = typer.Option(0, "--no-repeat-ngram", min=0, help="Forbid repeating n-grams of this size."),
    seed: int = typer.Option(0, "--seed", help="Random seed for sampling."),
    decoding: Optional[Path] = typer.Option(None, "--decoding", help="A decoding.json from `explainrec tune-decoding` "
                                            "(settings chosen on the valid split); replaces the decoding options above."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Write an explanation for every user-item pair of a split or of a stream of pairs (--pairs; then run
    `explainrec evaluate`), or for one pair."""
    from contextlib import nullcontext

    from explainrec.folders import writing_into
    from explainrec.methods.explain import check_chunked_output, explain_pairs, explain_split, normalise_split
    from explainrec.methods.sharding import current_launch

    generation = GenerationConfig.from_dict(dict(
        batch_size=batch_size, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
        top_p=top_p, num_beams=num_beams, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, seed=seed), "generation")
    if decoding is not None:
        from explainrec.methods.decoding_search import read_decoding

        generation = read_decoding(decoding).replace(batch_size=batch_size)
    _check_precision(precision)
    one_pair = any(v is not None for v in (user, item, pair_file))
    if one_pair and pairs is not None:
        raise UsageError("--pairs explains a file of pairs, --user/--item/--pair-file one pair: pick one")
    if one_pair:
        pair_text = dict(title=title, user_profile=user_profile, item_profile=item_profile)
        pair, source = _one_pair(user, item, pair_file, pair_text, data, trust_pickle)
        explainer = _open_explainer(model, method, precision)
        row = explainer.explain([pair], generation)[0]
        row["prompt_from"] = source
        if row.get("cold_start"):
            row["note"] = "the model never saw this user or item in training: it took the cold-start path"
        typer.echo(json.dumps(row, indent=2, ensure_ascii=False))
        return
    if data is None and pairs is None:
        raise UsageError("--data is required to explain a split, --pairs FILE to explain a stream of pairs (or give "
                         "--user and --item for one pair)")
    split = normalise_split(split)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    inputs, runs = _model_inputs(model)
    launch = current_launch()

    def check_output() -> None:  # once, by the main process, before any process loads or writes anything
        check_output_file(out, inputs=[data_path(data) if data else None, pairs, decoding, *inputs], runs=runs,
                          overwrite=overwrite)
        check_chunked_output(out, resume=resume, overwrite=overwrite)

    launch.main_decides(check_output)
    stream = None
    if pairs is not None:
        from explainrec.data.pair_stream import PairStream

        stream = PairStream(check_input_file(pairs, option="--pairs"), limit=limit)
        stream.scan(chunk_size)  # every record checked before the model loads
    dataset = _load_data(data, trust_pickle) if data is not None else None
    explainer = _open_explainer(model, method, precision)
    identity = {"model": _model_identity(model, explainer), "precision": explainer.info.get("precision")}
    with writing_into(out.parent, command=_command_line()) if launch.is_main else nullcontext():
        if stream is not None:
            from explainrec.data.pair_stream import DatasetText

            text = DatasetText(dataset) if dataset is not None else None
            _, stats = explain_pairs(explainer, stream, out, chunk_size=chunk_size, generation=generation,
                                     resume=resume, identity=identity, text=text, launch=launch, echo=typer.echo)
        else:
            _, stats = explain_split(explainer, dataset, split, limit=limit, out=out, generation=generation,
                                     progress=True, chunk_size=chunk_size, resume=resume, identity=identity,
                                     launch=launch, echo=typer.echo)
    if launch.is_main:
        typer.echo(f"wrote {out}\n{_format_throughput(stats)}")
    else:
        typer.echo(f"process {launch.rank} of {launch.world}: its chunks are written; the main process writes "
                   f"{out}\n{_format_throughput(stats)}")


def _model_inputs(model: Optional[str]) -> tuple[list[Path], list[Path]]:
    """``(inputs, runs)`` of a ``--model`` value for the output checks: a run folder is a run (predictions may go
    beside its model), a model folder or a local LLM folder an input (nothing may go inside)."""
    from explainrec.methods.model_folder import MANIFEST

    path = Path(model) if model else None
    if path is None or not path.exists():
        return [], []
    if path.is_dir() and not (path / MANIFEST).is_file() and not (path / "config.json").is_file():
        return [], [path]
    return [path], []


def _model_identity(model: Optional[str], explainer) -> dict:
    """What decides an explainer's texts, for a resumed explain to compare: the weights' hashes of a trained
    model, else the method and the LLM's name."""
    from explainrec.methods.model_folder import open_model_folder

    if model is not None and Path(model).is_dir():
        try:
            folder, manifest = open_model_folder(model)
            return {"method": manifest["method"], "weights": manifest.get("sha256")}
        except DataError:
            pass
    return {"method": explainer.method, "llm": model}


def _check_precision(precision: str) -> None:
    from explainrec.methods.model_folder import PRECISIONS

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def _one_pair(user, item, pair_file, texts: dict, data, trust_pickle):
    """The pair to explain and where its prompt text came from (the dataset's example, its profiles, or you)."""
    from explainrec.data.schema import Pair

    given: dict = {}
    if pair_file is not None:
        check_input_file(pair_file, option="--pair-file")
        try:
            given = json.loads(pair_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"--pair-file {pair_file}: not valid JSON ({err})") from None
        allowed = {"user", "item", "title", "user_profile", "item_profile", "features", "rating"}
        if not isinstance(given, dict) or set(given) - allowed:
            raise UsageError(f"--pair-file {pair_file}: expected a JSON object with keys among {sorted(allowed)}")
        _check_pair_fields(given, f"--pair-file {pair_file}")
    user = user if user is not None else given.get("user")
    item = item if item is not None else given.get("item")
    if user is None or item is None:
        raise UsageError("one pair needs both --user and --item (or both in --pair-file)")
    source, pair = "command line", Pair(user=str(user), item=str(item))
    if data is not None:
        pair, source = _load_data(data, trust_pickle).pair(str(user), str(item))
        source = {"example": "dataset (the pair's own example, as in training)",
                  "profiles": "dataset (the item's and user's profiles)", "unknown": "nothing known"}[source]
    extra = {**{k: v for k, v in given.items() if k not in ("user", "item")},
             **{k: v for k, v in texts.items() if v is not None}}
    if extra:
        if "features" in extra:
            extra["features"] = tuple(extra["features"])
        pair = Pair(**{**pair.__dict__, **extra})
        source = "command line" if source == "nothing known" or data is None else source + " + command line"
    return pair, source


def _check_pair_fields(given: dict, where: str) -> None:
    """Each field of a pair given as JSON has its type: ids text or integers, texts text, features a list of words
    (a string there would be split into letters), rating a number."""
    for key in ("user", "item"):
        if key in given and (not isinstance(given[key], (str, int)) or isinstance(given[key], bool)):
            raise UsageError(f"{where}: field '{key}' must be an id (text or integer), got {given[key]!r}")
    for key in ("title", "user_profile", "item_profile"):
        if given.get(key) is not None and not isinstance(given[key], str):
            raise UsageError(f"{where}: field '{key}' must be text, got {given[key]!r}")
    features = given.get("features")
    if features is not None and (not isinstance(features, list) or not all(isinstance(f, str) for f in features)):
        raise UsageError(f"{where}: field 'features' must be a list of words, e.g. [\"collar\", \"zipper\"]; got "
                         f"{features!r}")
    rating = given.get("rating")
    if rating is not None and (not isinstance(rating, (int, float)) or isinstance(rating, bool) or rating != rating):
        raise UsageError(f"{where}: field 'rating' must be a number, got {rating!r}")


def _format_throughput(stats) -> str:
    s = stats.as_dict()
    keys = [k for k in ("explanations", "new_tokens", "seconds", "explanations_per_s", "tokens_per_s") if k in s]
    return "  ".join(f"{k}={s[k]:.3g}" if isinstance(s[k], float) else f"{k}={s[k]}" for k in keys)


# ---------------------------------------------------------------------------------------------------- evaluate, compare


@app.command()
@boundary
def evaluate(
    predictions: Path = typer.Argument(..., metavar="PREDICTIONS|RUN", help="JSON lines with prediction and reference "
                                       "(optional user, features, bucket); with --extra, a trained run folder."),
    settings: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="With --extra: that "
                                                   "evaluation's options (explainrec methods METHOD lists them)."),
    extra: Optional[str] = typer.Option(None, "--extra", help="Run an evaluation the run's method declares (explainrec "
                                        "methods METHOD lists them) on RUN instead of scoring a predictions file; "
                                        "writes NAME.json and NAME.md. Needs --data."),
    data: Optional[str] = typer.Option(None, "--data", help="With --extra: the dataset RUN was trained on. " + DATA_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for metrics.json and metrics.md (default: beside the "
                                       "file), or with --extra for NAME.json and NAME.md (default: RUN)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compute BERTScore (needs the encoder)."),
    bertscore_model: str = typer.Option(
        "minilm",
        "--bertscore-model",
        help="Encoder for BERTScore: 'minilm' (embedded; not comparable to published numbers), "
        "or an HF id such as roberta-large (what published results use, with --rescale).",
    ),
    bertscore_layers: Optional[int] = typer.Option(None, "--bertscore-layers", min=1, help="Encoder layer to use (default: bert-score's choice or all for MiniLM)."),
    rescale: bool = typer.Option(False, "--rescale", help="Rescale BERTScore with bert-score's baseline (roberta-large etc.)."),
    specificity: bool = typer.Option(True, "--specificity/--no-specificity", help=SPECIFICITY_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """BLEU-1/4, ROUGE-1/2/L, Distinct-1/2, USR, BERTScore P/R/F1, pair retrieval R@1/R@10/MRR (with chance),
    FMR/FCR/DIV, with std and per-bucket tables; or, with --extra NAME, an evaluation a method declares, run on one
    of its run folders (explainrec evaluate RUN --extra NAME --data DATA [KEY=VALUE ...])."""
    from explainrec import api
    from explainrec.metrics import to_markdown
    from explainrec.metrics.report import report_paths

    if extra is not None:
        if data is None:
            raise UsageError(f"--extra {extra}: give --data, the dataset {predictions} was trained on")
        from explainrec.config import parse_overrides
        from explainrec.methods.evaluations import declared

        _, evaluation = declared(predictions, extra)  # a method without it is named before any work
        folder = out if out is not None else predictions
        api.evaluate(predictions, extra=extra, data=data, out=folder, overwrite=overwrite, trust_pickle=trust_pickle,
                     echo=typer.echo, command=_command_line(), **parse_overrides(list(settings or [])))
        written = [folder / name for name in evaluation.files]
        typer.echo(written[1].read_text(encoding="utf-8") + f"\nwrote {written[0]} and {written[1]}")
        return
    if settings or data is not None:
        raise UsageError("KEY=VALUE options and --data belong to --extra NAME (an evaluation a method declares); "
                         "scoring a predictions file takes neither")
    check_input_file(predictions, option="PREDICTIONS")
    folder = out if out is not None else predictions.parent
    options = {**({"num_layers": bertscore_layers} if bertscore_layers is not None else {}),
               **({"rescale_with_baseline": True} if rescale else {})}
    result = api.evaluate(predictions, out=folder, overwrite=overwrite, bertscore=bertscore,
                          bertscore_model=bertscore_model, bertscore_options=options or None, specificity=specificity,
                          command=_command_line())
    json_path, md_path = report_paths(folder)
    typer.echo(to_markdown(result, title=str(predictions)))
    typer.echo(f"\nwrote {json_path} and {md_path}")


@app.command()
@boundary
def sensitivity(
    run: Optional[str] = typer.Argument(None, help="A trained run folder; with a method that needs no training "
                                        "(--method zero-shot), the LLM instead (default: the embedded one)."),
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    method: Optional[str] = typer.Option(None, "--method", help="As for explain: a method that needs no training "
                                         "(zero-shot), or the method RUN must hold."),
    n: int = typer.Option(48, "--n", min=1, help="Pairs (u, i) of the split sampled; each is explained again for "
                          "another user u'."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampled pairs and of the other users."),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    max_new_tokens: int = typer.Option(80, "--max-new-tokens", min=1, help="Longest explanation, in tokens."),
    batch_size: int = typer.Option(GenerationConfig.batch_size, "--batch-size", min=1, help="Prompts generated together."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for sensitivity.json and sensitivity.md "
                                       "(default: RUN)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """User sensitivity: explain the same item for another user and measure how much the text changes and whether it
    moves toward that user (a template scores 0). Reuses RUN/predictions.jsonl for the original pairs when it
    matches."""
    from explainrec.folders import writing_into
    from explainrec.io import atomic_write_json, atomic_write_text
    from explainrec.methods import registry
    from explainrec.methods.explain import normalise_split
    from explainrec.methods.sensitivity import to_markdown, user_sensitivity

    _check_precision(precision)
    split = normalise_split(split)
    untrained = method is not None and not registry.get(method).trains
    folder = None if untrained or run is None else Path(run)
    if folder is None and not untrained:
        raise UsageError("sensitivity needs a run folder (explainrec sensitivity RUN --data DATA) or a method that "
                         "needs no training (--method zero-shot)")
    if folder is not None and not folder.is_dir():
        raise UsageError(f"RUN {run}: " + ("no such folder" if not folder.exists() else "is a file, not a folder")
                         + " (expected a run folder from `explainrec train METHOD ... --out RUN`)")
    if out is None and folder is None:
        raise UsageError(f"--method {method}: give --out FOLDER for sensitivity.json and sensitivity.md (there is "
                         "no run folder to write them to)")
    inputs, runs = _model_inputs(run)
    out_dir = check_output_folder(out if out is not None else folder, writes=["sensitivity.json", "sensitivity.md"],
                                  inputs=[data_path(data), *inputs], runs=runs, overwrite=overwrite)
    rows, note = _predictions_of(folder)
    dataset = _load_data(data, trust_pickle)
    explainer = _open_explainer(run, method, precision)
    generation = GenerationConfig(batch_size=batch_size, max_new_tokens=max_new_tokens)
    result = user_sensitivity(explainer, dataset, split=split, n=n, seed=seed, generation=generation,
                              original_rows=rows, progress=stderr_is_terminal())
    if note:
        result["notes"].append(note)
    label = f"{explainer.method} ({run})" if run else explainer.method
    markdown = to_markdown(result, title=label)
    with writing_into(out_dir, command=_command_line()):
        atomic_write_json(out_dir / "sensitivity.json", result)
        atomic_write_text(out_dir / "sensitivity.md", markdown)
    typer.echo(markdown + f"\nwrote {out_dir / 'sensitivity.json'} and {out_dir / 'sensitivity.md'}")


def _predictions_of(folder: Optional[Path]) -> tuple[Optional[list[dict]], Optional[str]]:
    """The rows of RUN/predictions.jsonl to reuse for the original pairs (None without one), and a note when the
    file is there but cannot be read."""
    from explainrec.data.readers import iter_jsonl
    from explainrec.data.schema import DataError

    file = folder / "predictions.jsonl" if folder is not None else None
    if file is None or not file.is_file():
        return None, None
    try:
        return [obj for _, obj in iter_jsonl(file)], None
    except (DataError, OSError, UnicodeDecodeError) as err:
        return None, f"{file}: not reused ({err}); every original pair was explained"


@app.command("tune-decoding")
@boundary
def tune_decoding(
    run: str = typer.Argument(..., help="A run folder (or, with a method that needs no training, --method)."),
    data: str = typer.Option(..., "--data", help=DATA_HELP),
    method: Optional[str] = typer.Option(None, "--method", help="As for explain (zero-shot: RUN is the LLM)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write decoding.json (default: RUN/decoding.json)."),
    limit: int = typer.Option(100, "--limit", min=1, help="Validation pairs each candidate explains."),
    rule: str = typer.Option("rougeL+bertscore", "--rule", help="What to maximise: rougeL+bertscore (mean), rougeL, "
                             "bleu4, or mrr@overlap-1 (the most specific candidate, by pair-retrieval MRR, among "
                             "those within 1 point of greedy's overlap)."),
    grid: str = typer.Option("default", "--grid", help="Candidates: default (greedy, repetition controls, beams, "
                             "nucleus sampling) or specificity (also typical sampling and k sampled texts reranked "
                             "by closeness to the pair's inputs)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Score with BERTScore too (embedded MiniLM)."),
    batch_size: int = typer.Option(GenerationConfig.batch_size, "--batch-size", min=1, help="Prompts generated together."),
    max_new_tokens: int = typer.Option(80, "--max-new-tokens", min=1, help="Longest explanation, in tokens."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Choose the decoding settings on the valid split (greedy, repetition penalty, n-gram blocking, beams, sampling),
    never on test; write them to decoding.json for `explainrec explain --decoding`."""
    from explainrec.folders import writing_into
    from explainrec.io import atomic_write_json
    from explainrec.methods.decoding_search import check_search, choose_decoding

    _check_precision(precision)
    check_search(rule, grid)
    target = out if out is not None else Path(run) / "decoding.json"
    inputs, runs = _model_inputs(run)
    check_output_file(target, inputs=[data_path(data), *inputs], runs=runs, overwrite=overwrite)
    dataset = _load_data(data, trust_pickle)
    if not dataset.split_examples("valid"):
        raise DataError(f"dataset {dataset.name!r} has no explained pairs in split 'valid': the decoding is chosen "
                        "there (never on test)")
    explainer = _open_explainer(run, method, precision)
    record = choose_decoding(explainer, dataset, GenerationConfig(batch_size=batch_size, max_new_tokens=max_new_tokens),
                             limit=limit, rule=rule, grid=grid, bertscore=bertscore, echo=typer.echo)
    with writing_into(target.parent, command=_command_line()):
        atomic_write_json(target, record)
    typer.echo(f"chosen on {record['pairs']} validation pairs ({record['rule']}): {record['chosen'] or 'greedy'}\n"
               f"wrote {target}")


@app.command()
@boundary
def compare(
    predictions_a: Path = typer.Argument(..., help="Predictions of method A (JSON lines, as for evaluate), or a run "
                                         "group folder with seedK/predictions.jsonl (a bench's OUT/DATASET/RUN)."),
    predictions_b: Path = typer.Argument(..., help="Predictions of method B on the same test pairs (a file, or a run "
                                         "group folder like A's)."),
    names: Optional[str] = typer.Option(None, "--names", help="Labels 'A,B' for the table (default: the parent folders)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compare BERTScore too (needs the encoder)."),
    specificity: bool = typer.Option(True, "--specificity/--no-specificity",
                                     help="Compare pair retrieval's per-pair reciprocal rank too (ret_mrr; the shared "
                                     "pairs' references are the candidates; needs the embedded encoder)."),
    resamples: int = typer.Option(10_000, "--resamples", min=100, help="Bootstrap and permutation resamples."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the result as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Paired test of B against A on the pairs both explained: mean gap, bootstrap 95% interval, permutation p.

    Two run group folders: the same per seed both have, then the seeds' mean gap with a one-sample t-test."""
    from explainrec.io import atomic_write_json
    from explainrec.metrics import load_predictions, significance

    folders = predictions_a.is_dir(), predictions_b.is_dir()
    if any(folders) and not all(folders):
        raise UsageError("compare takes two prediction files or two run group folders (seedK/predictions.jsonl), "
                         f"not one of each: {predictions_a}, {predictions_b}")
    if not all(folders):
        for p, opt in ((predictions_a, "PREDICTIONS_A"), (predictions_b, "PREDICTIONS_B")):
            check_input_file(p, option=opt)
    default = (predictions_a.name, predictions_b.name) if all(folders) else (predictions_a.parent.name,
                                                                             predictions_b.parent.name)
    labels = tuple(names.split(",", 1)) if names else default
    if len(labels) != 2 or not all(label.strip() for label in labels):
        raise UsageError(f"--names takes two labels 'A,B'; got {names!r}")
    if out is not None:
        check_output_file(out, inputs=(predictions_a, predictions_b), overwrite=overwrite)
    kw = dict(names=labels, bertscore=bertscore, specificity=specificity, n_resamples=resamples)
    if all(folders):
        result = significance.compare_seeds(significance.seed_files(predictions_a),
                                            significance.seed_files(predictions_b), **kw)
        typer.echo(significance.seeds_to_markdown(result))
    else:
        result = significance.compare(load_predictions(predictions_a), load_predictions(predictions_b), **kw)
        typer.echo(significance.to_markdown(result))
    if out is not None:
        atomic_write_json(out, result)
        typer.echo(f"\nwrote {out}")


# ---------------------------------------------------------------------------------------------------- demo, bench


@app.command()
@boundary
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for both runs and the comparison table."),
    model: str = typer.Option("smollm2-135m", "--model", help="LLM: embedded default, HF id, local folder, or 'tiny'."),
    n: int = typer.Option(16, "--n", min=1, help="Test pairs to explain (the same pairs for both methods)."),
    batch_size: int = typer.Option(GenerationConfig.batch_size, "--batch-size", min=1, help="Generation batch size."),
    steps: int = typer.Option(12, "--steps", min=1, help="Training steps of the demo's trained method (its LLM stage)."),
    bertscore: bool = typer.Option(True, "--bertscore/--no-bertscore", help="Compute BERTScore (embedded MiniLM)."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo both runs even if --out holds finished ones."),
) -> None:
    """Train the flagship method small on the built-in data and compare it with zero-shot on the same test pairs
    (explainrec.demo says which)."""
    from explainrec.demo import run_demo

    check_run_folder(out, inputs=[Path(model)] if Path(model).exists() else [])
    run_demo(out=out, model_name=model, n=n, batch_size=batch_size, steps=steps, bertscore=bertscore, fresh=fresh,
             echo=typer.echo)


@app.command()
@boundary
def bench(
    config: Path = typer.Argument(..., help="Bench config (.yaml/.yml or .toml): datasets x runs x seeds, experiments."),
    only: Optional[list[str]] = typer.Option(
        None, "--only", help="Run only these runs: globs over DATASET/RUN/seedK, DATASET/RUN or RUN (repeatable, or comma-separated)."),
    jobs: Optional[int] = typer.Option(
        None, "--jobs", min=1, help="Runs at a time, each in its own process with its share of the cores (output in "
        "OUT/logs/); default: the config's 'jobs', else 1."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and each run's state; run nothing."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild OUT/report.md from the finished runs (with --only: those runs alone); run nothing."),
) -> None:
    """Run an experiment grid (resumable: finished runs are skipped), then write OUT/report.md with tables and figures."""
    import shlex

    from explainrec.bench.harness import run_bench

    words = ["explainrec", "bench", str(config)] + [f"--only={o}" for o in only or []]
    words += [f"--jobs={jobs}"] if jobs else []
    result = run_bench(config, only=only, jobs=jobs, dry_run=dry_run, report_only=report_only,
                       progress=stderr_is_terminal(), command=" ".join(shlex.quote(w) for w in words), echo=typer.echo)
    if result.failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------------- serve


def check_port_free(host: str, port: int) -> None:
    """A busy port is said before the model loads, not after."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as err:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


@app.command()
@boundary(signals=False)  # uvicorn handles SIGINT/SIGTERM itself (a graceful shutdown)
def serve(
    run: Optional[Path] = typer.Argument(None, metavar="RUN_DIR", help="A trained run folder (from `explainrec train METHOD`), or its "
                                         "model/ folder. Or leave it out and give --method."),
    method: Optional[str] = typer.Option(None, "--method", help="Serve a method that needs no training (zero-shot) "
                                         "instead of a run folder; with RUN, the method RUN must hold."),
    model: Optional[str] = typer.Option(None, "--model", help="With --method zero-shot: the LLM ('smollm2-135m', "
                                        "embedded, the default; 'tiny'; an HF id or a local folder)."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP + " Known pairs get their prompt text from "
                                       "it exactly as in training; the page searches its ids and titles."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. The default is reachable from this "
                             "machine only; anything else exposes the server (then use --api-key-env)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
    max_batch: int = typer.Option(16, "--max-batch", min=1, max=256, help="Most requests generated together in one "
                                  "batch (1 = one at a time)."),
    max_wait_ms: float = typer.Option(20.0, "--max-wait-ms", min=0.0, max=10_000.0, help="How long the oldest waiting "
                                      "request waits for others to join its batch."),
    queue: int = typer.Option(64, "--queue", min=1, max=100_000, help="Pairs that may wait for a batch; more are "
                              "answered 429 with Retry-After (a batch request larger than the queue: 422)."),
    timeout_s: float = typer.Option(120.0, "--timeout-s", min=0.1, help="Per request, waiting plus generating; "
                                    "later ones are answered 504."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, max=4096, help="The longest explanation a "
                                       "request may ask for (more is refused with 422, never cut)."),
    grace_seconds: float = typer.Option(30.0, "--grace-seconds", min=0.0, max=86_400.0, help="On SIGTERM or Ctrl-C: "
                                        "new requests get 503 at once, queued and running ones may finish for this "
                                        "long, then get 503 too (a second signal ends the wait). Keep it under your "
                                        "orchestrator's kill timeout (Kubernetes: terminationGracePeriodSeconds)."),
    ungrounded: str = typer.Option("explain", "--ungrounded", help="A pair nothing is known about (no text from "
                                   "--data or the request, ids the model never learned): 'explain' it and say so "
                                   "(grounded: false), or 'refuse' it (422)."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of an environment variable holding "
                                              "the API key: /v1/* then needs header X-API-Key or Authorization: "
                                              "Bearer with that value (the key itself never goes on the command "
                                              "line)."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="A web origin (https://app.example.org) whose "
                                          "pages may call the API from a browser; repeat for several, '*' for any. "
                                          "None by default (only the server's own page)."),
    max_pairs: int = typer.Option(32, "--max-pairs", min=1, max=10_000, help="Pairs in one /v1/explain/batch "
                                  "request (never more than --queue).", rich_help_panel="Request limits"),
    max_body_bytes: int = typer.Option(64 * 1024, "--max-body-bytes", min=1024, max=64 * 1024 * 1024,
                                       help="Largest request body (413 above).", rich_help_panel="Request limits"),
    body_timeout_s: float = typer.Option(30.0, "--body-timeout-s", min=0.1, max=3600.0, help="A request's body must "
                                         "arrive within this (408 after: a stalled client does not hold the server).",
                                         rich_help_panel="Request limits"),
    max_id_chars: int = typer.Option(200, "--max-id-chars", min=1, max=100_000, help="Longest user or item id.",
                                     rich_help_panel="Request limits"),
    max_title_chars: int = typer.Option(500, "--max-title-chars", min=1, max=1_000_000, help="Longest title.",
                                        rich_help_panel="Request limits"),
    max_profile_chars: int = typer.Option(4000, "--max-profile-chars", min=1, max=1_000_000, help="Longest user or "
                                          "item profile.", rich_help_panel="Request limits"),
    max_features: int = typer.Option(32, "--max-features", min=0, max=10_000, help="Most feature words per pair.",
                                     rich_help_panel="Request limits"),
    max_feature_chars: int = typer.Option(64, "--max-feature-chars", min=1, max=10_000, help="Longest feature word.",
                                          rich_help_panel="Request limits"),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="One log line per request (id, "
                                    "status, time, tokens, finish reason; health probes only when they fail)."),
    log_format: str = typer.Option("text", "--log-format", help="'text' or 'json' (one JSON object per line)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
) -> None:
    """Serve explanations over HTTP: a JSON API (/docs), streaming, dynamic batching, a web page at /, /metrics
    (Prometheus), /healthz and /readyz; SIGTERM drains (docs/serving.md)."""
    import os

    from explainrec.methods import registry
    from explainrec.methods.model_folder import load_run
    from explainrec.serve import server
    from explainrec.serve.lifecycle import Lifecycle
    from explainrec.serve.schemas import ServeSettings

    _check_precision(precision)
    for option, value, allowed in (("--ungrounded", ungrounded, ("explain", "refuse")),
                                   ("--log-format", log_format, ("text", "json"))):
        if value not in allowed:
            raise UsageError(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    wanted = registry.get(method) if method else None  # unknown names fail here, before any loading
    if run is not None and model is not None:
        raise UsageError("--model names the LLM of a method that needs no training; a run folder brings its own "
                         "model: drop --model")
    if run is None and wanted is None:
        raise UsageError("serve needs a run folder (explainrec serve RUN) or a method that needs no training "
                         "(explainrec serve --method zero-shot)")
    # what loading would refuse is said now: the server starts listening before the model loads
    if run is None and wanted.trains:
        raise UsageError(f"{wanted.name} needs a trained run folder: train one with `explainrec train {wanted.name} "
                         "...` and serve it (explainrec serve RUN)")
    if run is not None:
        from explainrec.methods.model_folder import find_model_folder, read_manifest

        held = read_manifest(find_model_folder(run))["method"]
        if wanted is not None and held != wanted.name:
            raise UsageError(f"{run} holds a {held} model, not {wanted.name}")
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, queue=queue, timeout_s=timeout_s,
                             max_new_tokens=max_new_tokens, max_pairs=max_pairs, max_body_bytes=max_body_bytes,
                             body_timeout_s=body_timeout_s, max_id_chars=max_id_chars, max_title_chars=max_title_chars,
                             max_profile_chars=max_profile_chars, max_features=max_features,
                             max_feature_chars=max_feature_chars, grace_s=grace_seconds, ungrounded=ungrounded,
                             cors_origins=tuple(cors_origin), api_key=api_key)
    settings.check()
    check_port_free(host, port)
    if not server.is_loopback(host) and api_key is None:
        typer.secho(f"warning: --host {host} exposes the server beyond this machine without a key; "
                    "consider --api-key-env NAME", fg="yellow", err=True)

    def open_explainer():
        if run is None:
            return _open_explainer(model, method, precision)
        explainer = load_run(run, precision=precision)
        if wanted is not None and explainer.method != wanted.name:
            raise UsageError(f"{run} holds a {explainer.method} model, not {wanted.name}")
        return explainer

    def announce(service) -> None:
        info = service.model_info()
        if (info["served_data"] or {}).get("matches_model") is False:
            typer.secho(f"warning: --data {data} is not the data the model was trained on (other id maps); its text "
                        "still fills the prompts, but the model knows the ids it was trained with", fg="yellow",
                        err=True)
        typer.echo(f"serving {info['method']} ({info['model']}, {info['precision']}, loaded in "
                   f"{info['load_seconds']} s) on http://{host}:{port}  -- page /, API docs /docs, /metrics"
                   + ("  (API key required)" if api_key else ""))

    dataset = _load_data(data, trust_pickle) if data is not None else None
    typer.echo(f"loading the model; http://{host}:{port}/readyz answers 503 until it is ready")
    lifecycle = Lifecycle(settings, load=lambda: server.build_service(open_explainer, dataset, settings, precision),
                          on_ready=announce)
    server.run(lifecycle, host=host, port=port, access_log=access_log, log_format=log_format)


# ---------------------------------------------------------------------------------------------------- rate


rate_app = typer.Typer(help="Human evaluation (the flagship paper's Table 4): a blind rating page, an LLM judge on the same "
                       "rubric, and the report (docs/human-evaluation.md).", invoke_without_command=True)
app.add_typer(rate_app, name="rate")


def _predictions_option(values: list[str]) -> dict[str, Path]:
    """``NAME=FILE`` or ``FILE`` (named after its folder) -> {name: file}."""
    files: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        path = Path(file if sep else value)
        name = name.strip() if sep else path.parent.name or path.stem
        check_input_file(path, option="--predictions")
        if not name or name in files:
            raise UsageError(f"--predictions {value}: method name {name!r} is empty or given twice; name each file "
                             "as NAME=FILE")
        files[name] = path
    return files


@rate_app.callback()
@boundary
def rate(
    ctx: typer.Context,
    study: Optional[Path] = typer.Option(None, "--study", help="The study folder: study.json (the design, fixed "
                                         "before the first rating), ratings.jsonl, the report."),
    predictions: list[str] = typer.Option([], "--predictions", help="NAME=FILE: one method's predictions (JSON "
                                          "lines with user, item, prediction, reference); two or more on the same "
                                          "pairs make a new study (repeat the option)."),
    pairs: int = typer.Option(50, "--pairs", min=1, help="How many shared pairs to sample for a new study."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pair sample and of each pair's order of explanations."),
    data: Optional[str] = typer.Option(None, "--data", help=DATA_HELP + " Gives each pair its context (item title "
                                       "and profile, user profile, items the user had in training)."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address of the page. The default is reachable from this "
                             "machine only; any other needs --tokens."),
    port: int = typer.Option(8010, "--port", min=1, max=65535, help="Port of the page."),
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="A file of 'NAME TOKEN' lines: raters sign in with "
                                          "their token instead of typing a name."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Score the study with an LLM judge instead of serving "
                                        "the page: 'smollm2-135m' (embedded), 'tiny', an HF id or a local folder. "
                                        "Its scores go into ratings.jsonl as rater judge:MODEL; reruns resume."),
    judge_batch: int = typer.Option(8, "--judge-batch", min=1, max=256, help="Prompts per forward pass of the judge."),
    judge_limit: Optional[int] = typer.Option(None, "--judge-limit", min=1, help="Score at most this many pairs "
                                              "(the rest on a later run)."),
) -> None:
    """Run a blind rating study: make it from predictions files, serve the page to raters, or let an LLM judge
    score it. `explainrec rate report STUDY` summarises the ratings."""
    if ctx.invoked_subcommand is not None:
        return
    from explainrec.rate import create_study, load_study

    if study is None:
        raise UsageError("rate needs --study FOLDER (with --predictions NAME=FILE ... to make a new study), or a "
                         "subcommand: explainrec rate report STUDY")
    if predictions:
        files = _predictions_option(predictions)
        if len(files) < 2:
            raise UsageError("a study compares two or more methods: give --predictions NAME=FILE at least twice")
        check_output_folder(study, option="--study")
        dataset = _load_data(data, trust_pickle) if data is not None else None
        the_study = create_study(study, files, n_pairs=pairs, seed=seed, dataset=dataset)
    else:
        if data is not None:
            raise UsageError("--data gives a new study its context; an existing study already holds it: drop --data")
        the_study = load_study(study)
    typer.echo(f"study {the_study.id}: {len(the_study.pairs)} pairs of {', '.join(the_study.method_names)} "
               f"(seed {the_study.seed}) in {study}")
    if judge is not None:
        from explainrec.llm.load import load_llm
        from explainrec.rate.judge import Judge, judge_name, judge_study

        name = judge_name(judge)
        model, tokenizer = load_llm(judge)
        done = judge_study(the_study, Judge(model, tokenizer, batch_size=judge_batch), name, model_id=judge,
                           limit=judge_limit,
                           progress=lambda i, n: typer.echo(f"  {name}: {i}/{n} pairs", err=True))
        typer.echo(f"{name} scored {done} pair(s) into {the_study.ratings_path}; the report: explainrec rate report "
                   f"{study}")
        return
    from explainrec.rate.app import create_app, read_tokens
    from explainrec.rate.app import run as run_page
    from explainrec.serve.server import is_loopback

    token_map = read_tokens(tokens) if tokens is not None else None
    if not is_loopback(host) and token_map is None:
        raise UsageError(f"--host {host} lets other machines reach the page; give raters tokens (--tokens FILE of "
                         "'NAME TOKEN' lines) so nobody can rate under another's name")
    check_port_free(host, port)
    page = create_app(the_study, tokens=token_map)
    for problem in page.state.desk.problems:
        typer.secho(f"warning: {problem}", fg="yellow", err=True)
    typer.echo(f"rating page on http://{host}:{port}  -- raters sign in with a "
               f"{'token' if token_map else 'name'}; ratings go to {the_study.ratings_path}")
    run_page(page, host=host, port=port)


@rate_app.command("report")
@boundary
def rate_report(
    study: Path = typer.Argument(..., help="The study folder (from explainrec rate --study)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Human-Score weights of P, Q, U, e.g. "
                                          "'0.4,0.3,0.3' (the paper's, the default) or 'P=0.5,Q=0.25,U=0.25'; "
                                          "non-negative, summing to 1."),
    resamples: int = typer.Option(10_000, "--resamples", min=100, help="Bootstrap and permutation resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and the permutation test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.md / .json / .png (default: STUDY)."),
) -> None:
    """Per method P, Q, U and Human-Score with 95% intervals, paired tests, Krippendorff's alpha, per-rater means."""
    from explainrec.rate import load_study
    from explainrec.rate.report import save_report, to_markdown
    from explainrec.rate.rubric import parse_weights

    try:
        w = parse_weights(weights)
    except ValueError as err:
        raise UsageError(f"--weights: {err}") from None
    the_study = load_study(study)
    if out is not None:
        check_output_folder(out)
    report, paths = save_report(the_study, out, weights=w, n_resamples=resamples, seed=seed)
    for problem in report["problems"]:
        typer.secho(f"warning: {problem}", fg="yellow", err=True)
    typer.echo(to_markdown(report))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
