"""The command-line layer: every setting is a flag, defaults print once and right, the old
flag spellings give the same settings, and ``mil-cyto`` dispatches to every command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest

from mil_cyto.cli import options
from mil_cyto.cli.main import COMMANDS
from mil_cyto.cli.main import main as mil_cyto_main
from mil_cyto.cli.options import Console, default_text, flag_of, from_args, given, option
from mil_cyto.config import TrainConfig, resolve_config
from mil_cyto.errors import MilCytoError

REPO = Path(__file__).resolve().parents[1]


def _configs() -> dict[str, list[type]]:
    """Each command's config dataclasses, in the order its parser adds them."""
    from mil_cyto.baseline import BaselineConfig
    from mil_cyto.cli.compare import CompareConfig
    from mil_cyto.cli.explain import ExplainOptions
    from mil_cyto.cli.mosaic import MosaicOptions
    from mil_cyto.cli.review import ReviewOptions
    from mil_cyto.cli.synth import SynthOptions
    from mil_cyto.cli.train import TrainCommand
    from mil_cyto.extract import ExtractConfig

    return {
        "train": [TrainConfig, TrainCommand, Console],
        "extract": [ExtractConfig, Console],
        "compare": [CompareConfig, Console],
        "baseline": [BaselineConfig, Console],
        "explain": [ExplainOptions, Console],
        "mosaic": [MosaicOptions, Console],
        "synth": [SynthOptions, Console],
        "review": [ReviewOptions],
    }


def _parser(command: str) -> argparse.ArgumentParser:
    import importlib

    return importlib.import_module(COMMANDS[command].module).build_parser()


def _sample(f: dataclasses.Field[Any], hint: Any) -> tuple[list[str], Any]:
    """Flag text for a non-default value of field ``f``, and the value it must parse to."""
    flag, meta = flag_of(f), f.metadata
    kind = options._unwrap(hint)
    origin = typing.get_origin(kind)
    if kind is bool:
        default = options.field_default(f)
        return ([flag], True) if default is not True else (["--no-" + flag[2:]], False)
    if meta["choices"]:
        pick = meta["choices"][-1]
        if meta["nargs"]:
            return [flag, meta["choices"][0], pick], (meta["choices"][0], pick)
        return [flag, pick], pick
    if meta["parse"] is not None:
        text = "3,4" if origin is tuple and len(typing.get_args(kind)) == 2 else "3,4,5"
        return [flag, text], meta["parse"](text)
    if kind is dict or origin is dict:
        return [flag, '{"a": 1}'], {"a": 1}
    samples = {
        int: ("7", 7),
        float: ("0.25", 0.25),
        str: ("xyz", "xyz"),
        Path: ("p/q", Path("p/q")),
    }
    text, value = samples[kind]
    return [flag, text], value


def _required_argv(config_types: list[type]) -> list[str]:
    argv: list[str] = []
    for config_type in config_types:
        hints = typing.get_type_hints(config_type)
        for f in dataclasses.fields(config_type):
            if options.field_default(f) is options.MISSING:
                argv += _sample(f, hints[f.name])[0]
    return argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_is_a_flag(command: str) -> None:
    """Each field of each command config has its flag, and a value given there reaches the
    config (TrainConfig's 49 fields included: weight_decay, synthetic_seed and the JSON
    kwargs fields too)."""
    parser = _parser(command)
    flags: dict[str, set[str]] = {}
    for action in parser._actions:
        flags.setdefault(action.dest, set()).update(action.option_strings)
    base = _required_argv(_configs()[command])
    n_fields = 0
    for config_type in _configs()[command]:
        hints = typing.get_type_hints(config_type)
        for f in dataclasses.fields(config_type):
            n_fields += 1
            assert flag_of(f) in flags.get(f.name, set()), (command, f.name)
            argv, expected = _sample(f, hints[f.name])
            args = parser.parse_args([*base, *argv])
            assert given(config_type, args)[f.name] == expected, (command, f.name)
    assert n_fields >= 3
    if command == "train":
        assert {f.name for f in dataclasses.fields(TrainConfig)} >= {
            "weight_decay",
            "synthetic_seed",
            "encoder_kwargs",
            "aggregator_kwargs",
        }


def test_a_field_without_a_flag_cannot_exist() -> None:
    @dataclasses.dataclass
    class Bad:
        documented: int = option(1, help="has a flag")
        undocumented: int = 2

    with pytest.raises(TypeError, match="undocumented has no flag"):
        options.build_parser("x", "y", Bad)
    with pytest.raises(ValueError, match="default_help"):
        option(1, help="three things (default: 1)")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_prints_each_default_once(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # one line per flag
    parser = _parser(command)
    text = parser.format_help()
    assert "(default: None)" not in text
    assert "(default: )" not in text
    for line in text.splitlines():
        assert line.count("(default") <= 1, line
    for config_type in _configs()[command]:
        for f in dataclasses.fields(config_type):
            action = next(a for a in parser._actions if a.dest == f.name)
            shown = default_text(f)
            if shown is None:
                assert "(default" not in action.help
            else:
                assert action.help.count("(default") == 1
                assert f"(default: {shown})".replace("%", "%%") in action.help
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "(default: None)" not in capsys.readouterr().out


def _train(argv: list[str], file_values: dict[str, Any] | None = None) -> TrainConfig:
    from mil_cyto.cli.train import build_parser

    return resolve_config(file_values or {}, given(TrainConfig, build_parser().parse_args(argv)))


def test_train_defaults_as_the_help_says() -> None:
    """The mode-dependent defaults resolve to what ``--help`` prints."""
    frozen, tuned = _train([]), _train(["--mode", "finetune"])
    assert (frozen.epochs, frozen.heads, frozen.refit, frozen.refine_epochs) == (48, 3, True, 5)
    assert (tuned.epochs, tuned.heads, tuned.refit, tuned.refine_epochs) == (16, 1, False, 0)
    assert frozen.pretrain == "simclr" and _train(["--weights", "w.pt"]).pretrain == "none"
    assert frozen.radial_rings == 16 and _train(["--instances", "grid"]).radial_rings == 0
    assert _train(["--tile-size", "48"]).stride == 48
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert default_text(fields["epochs"]) == "48 in frozen mode, 16 when fine-tuning"
    assert default_text(fields["heads"]) == "3 in frozen mode, 1 when fine-tuning"
    assert default_text(fields["radial_rings"]).startswith("16 for --instances cells, 0")


def test_old_train_flags_give_the_same_config() -> None:
    """Flags as spelled before the generated parser; the values the hand-written parser gave."""
    config = _train(
        ["--epochs", "3", "--no-refit", "--heads", "1", "--instances", "grid"]
        + ["--tile-size", "48", "--stride", "32", "--no-bag-norm", "--amp", "--seed", "5"]
        + ["--workers", "3", "--device", "cpu", "--lr", "0.01", "--loss", "ordinal"]
        + ["--radial-rings", "4", "--label-column", "cytology", "--data", "d", "--out", "o"]
        + ["--no-instance-attention", "--balanced-sampling", "--decode-processes", "2"]
    )
    expected = TrainConfig(
        data="d",
        out="o",
        label_column="cytology",
        epochs=3,
        refit=False,
        heads=1,
        instances="grid",
        tile_size=48,
        stride=32,
        bag_norm=False,
        amp=True,
        seed=5,
        workers=3,
        device="cpu",
        lr=0.01,
        loss="ordinal",
        radial_rings=4,
        instance_attention=False,
        balanced_sampling=True,
        decode_processes=2,
    )
    assert config == expected
    assert config.encoder_kwargs == {"radial_rings": 4} and config.refine_epochs == 5
    assert _train([]) == TrainConfig()


def test_train_new_flags_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The four fields that had no flag have one; a config file's values stay unless a flag
    is given (a flag's default never overrides the file)."""
    config = _train(
        ["--synthetic-seed", "3", "--weight-decay", "0.01"]
        + ["--encoder-kwargs", '{"width": 8}', "--aggregator-kwargs", '{"dropout": 0.1}']
    )
    assert (config.synthetic_seed, config.weight_decay) == (3, 0.01)
    assert config.encoder_kwargs == {"width": 8, "radial_rings": 16}
    assert config.aggregator_kwargs == {"dropout": 0.1}

    import mil_cyto.pipeline.run as pipeline_run
    from mil_cyto.cli.train import main

    seen: list[tuple[TrainConfig, bool]] = []

    def fake_run(config: TrainConfig, *, progress: bool = True) -> tuple[Path, dict[str, Any]]:
        seen.append((config, progress))
        return tmp_path, {}

    monkeypatch.setattr(pipeline_run, "run_training", fake_run)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 5, "bag_norm": False, "amp": False, "workers": 1}))
    assert main(["--config", str(path), "--lr", "0.01", "--amp", "--quiet"]) == 0
    ((config, progress),) = seen
    assert (config.epochs, config.bag_norm, config.workers) == (5, False, 1)
    assert (config.lr, config.amp, progress) == (0.01, True, False)
    assert main(["--config", str(tmp_path / "missing.json")]) == 2


def test_json_flags_report_a_bad_value(capsys: pytest.CaptureFixture[str]) -> None:
    from mil_cyto.cli.train import build_parser

    for bad in ("{width: 8}", "[1, 2]"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["--encoder-kwargs", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "--encoder-kwargs" in err and "JSON object" in err


def test_old_flags_of_the_other_commands() -> None:
    """The other commands' old spellings parse to the values their old parsers gave."""
    from mil_cyto.baseline import BaselineConfig
    from mil_cyto.cli.compare import CompareConfig
    from mil_cyto.cli.explain import ExplainOptions
    from mil_cyto.cli.mosaic import MosaicOptions
    from mil_cyto.cli.synth import SynthOptions
    from mil_cyto.extract import ExtractConfig

    args = _parser("extract").parse_args(
        ["--data", "d", "--out", "o.h5", "--encoder", "resnet18"]
        + ["--encoder-kwargs", '{"width": 8}', "--no-amp", "--compile", "off", "--quiet"]
    )
    extract = from_args(ExtractConfig, args)
    assert (extract.data, extract.out, extract.encoder_kwargs) == (
        Path("d"),
        Path("o.h5"),
        {"width": 8},
    )
    assert (extract.amp, extract.compile, extract.tile_size, extract.workers) == (
        False,
        "off",
        96,
        2,
    )
    assert from_args(Console, args).quiet
    assert (
        from_args(
            ExtractConfig,
            _parser("extract").parse_args(["--data", "d", "--out", "o", "--encoder", "e"]),
        ).amp
        is None
    )  # None = on with CUDA

    compare = from_args(
        CompareConfig,
        _parser("compare").parse_args(
            ["--budget", "full", "--folds", "2", "--mil-lr", "0.1", "--list"]
        ),
    )
    budget = compare.budget_settings()
    assert (budget.folds, budget.mil_lr, budget.cnn_epochs, compare.show_methods) == (
        2,
        0.1,
        300,
        True,
    )
    quick = from_args(CompareConfig, _parser("compare").parse_args([])).budget_settings()
    assert (quick.folds, quick.cnn_epochs, quick.encoder_max_tiles) == (3, 3, 48)

    baseline = from_args(
        BaselineConfig,
        _parser("baseline").parse_args(
            ["--arch", "resnet18", "--no-augment", "--class-weights", "--lr-decay", "0.5"]
        ),
    )
    assert baseline == BaselineConfig(
        arch="resnet18", augment=False, class_weights=True, lr_decay=0.5
    )
    assert from_args(BaselineConfig, _parser("baseline").parse_args([])) == BaselineConfig()

    explain = from_args(
        ExplainOptions,
        _parser("explain").parse_args(
            ["--run", "r", "--methods", "attention", "saliency", "--no-overlays", "--ig-steps", "4"]
        ),
    )
    config = explain.explain_config()
    assert (config.methods, config.overlays, config.settings.n_steps) == (
        ("attention", "saliency"),
        False,
        4,
    )
    default = from_args(ExplainOptions, _parser("explain").parse_args(["--run", "r"]))
    assert default.device == "cpu" and default.explain_config().methods == _all_methods()

    args = _parser("mosaic").parse_args(
        ["--cells", "c", "--mapping", "m.csv", "--out", "o", "--cells-per-field", "8,10"]
        + ["--scale", "0.5,1", "--masks", "masks", "--mask-suffix=-d", "--mask-background", "1,4"]
        + ["--no-progress"]
    )
    mosaic = from_args(MosaicOptions, args)
    assert (mosaic.cells_per_field, mosaic.scale, mosaic.atypical_per_field) == (
        (8, 10),
        (0.5, 1.0),
        (1, 5),
    )
    assert (mosaic.mask_spec().suffix, mosaic.mask_spec().background) == ("-d", (1, 4))
    assert from_args(Console, args).quiet

    args = _parser("synth").parse_args(["--out", "o", "--n-images", "6", "--no-progress"])
    synth = from_args(SynthOptions, args)
    assert (synth.synth_config().n_images, synth.synth_config().width, synth.out) == (
        6,
        800,
        Path("o"),
    )
    assert from_args(Console, args).quiet and 1 <= synth.workers <= 4


def _all_methods() -> tuple[str, ...]:
    from explain.attributions import list_methods

    return tuple(list_methods())


def test_shared_options_are_declared_once() -> None:
    """``--device``, ``--threads``, ``--workers`` and ``--quiet`` read the same in every
    command that has them (one definition in mil_cyto.cli.options)."""
    helps: dict[str, set[str]] = {}
    for config_types in _configs().values():
        for config_type in config_types:
            for f in dataclasses.fields(config_type):
                if f.name in ("device", "threads", "workers", "quiet"):
                    helps.setdefault(f.name, set()).add(f.metadata["help"])
    assert len(helps["device"]) == len(helps["threads"]) == len(helps["quiet"]) == 1
    assert helps["workers"] == {"threads decoding photos", "worker processes"}  # synth: processes


def test_console_script_and_dispatcher(capsys: pytest.CaptureFixture[str]) -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mil-cyto"] == "mil_cyto.cli.main:main"
    assert set(COMMANDS) == {
        "train",
        "extract",
        "compare",
        "baseline",
        "explain",
        "mosaic",
        "synth",
        "review",
    }
    with pytest.raises(SystemExit) as exit_info:
        mil_cyto_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            mil_cyto_main([name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: mil-cyto {name} ")
    with pytest.raises(SystemExit) as exit_info:
        mil_cyto_main(["nonsense"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("mil_cyto.train", "python -m mil_cyto.train"),
        ("mil_cyto.extract", "python -m mil_cyto.extract"),
        ("mil_cyto.compare", "python -m mil_cyto.compare"),
        ("mil_cyto.baseline", "python -m mil_cyto.baseline"),
        ("explain.__main__", "python -m explain"),
        ("mil_cyto.mosaic", "python -m mil_cyto.mosaic"),
        ("mil_cyto.synth", "python -m mil_cyto.synth"),
    ],
)
def test_python_m_forms_keep_working(
    module: str, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} ")


def test_installed_console_script() -> None:
    script = shutil.which("mil-cyto")
    if script is None:
        pytest.skip("mil-cyto is not installed (pip install -e .)")
    res = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "review" in res.stdout and "train" in res.stdout


def test_review_launches_streamlit_on_localhost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mil_cyto.cli import review
    from mil_cyto.cli.review import ReviewOptions, review_command

    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    command, folder = review_command(ReviewOptions(run=Path("runs/demo")), [], tmp_path)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("app/viewer.py")
    assert command[5:7] == ["--server.address", "127.0.0.1"]
    assert command[command.index("--") + 1 :] == ["--run", str(run)]
    assert folder == REPO  # the checkout's root: its .streamlit/config.toml applies
    command, _ = review_command(ReviewOptions(), ["--server.address=0.0.0.0"], tmp_path)
    assert command.count("127.0.0.1") == 0 and "--server.address=0.0.0.0" in command
    assert command[command.index("--") + 1 :] == ["--runs-root", str(tmp_path / "runs")]
    with pytest.raises(MilCytoError, match="no runs folder"):
        review_command(ReviewOptions(), [], tmp_path / "runs" / "demo")

    calls: list[tuple[list[str], Path]] = []
    monkeypatch.setattr(review, "launch", lambda cmd, cwd: calls.append((cmd, cwd)) or 0)
    monkeypatch.chdir(tmp_path)
    assert review.main(["--runs-root", "runs", "--server.port", "8502"]) == 0
    ((cmd, _cwd),) = calls
    assert cmd[cmd.index("--") - 2 : cmd.index("--")] == ["--server.port", "8502"]
    assert cmd[cmd.index("--") + 1 :] == ["--runs-root", str(tmp_path / "runs")]
    assert review.main(["--app", "nowhere.py"]) == 2
