"""pipeline/run.py, the CLI: argv handling, Beam flags, --dry-run, --help and every flag a message suggests.

The kinds of bad input and their messages are in tests/test_bad_input_matrix.py."""
from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

from pipeline.run import glue_negative_values, launch

TIME = ["--start", "2024-06-01", "--end", "2024-07-01"]


@pytest.fixture
def no_pipeline(monkeypatch):
    """Any attempt to build a pipeline fails the test: validation must stop first."""
    import pipeline.run as cli

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a pipeline was started")

    monkeypatch.setattr(cli, "run", forbidden)


def test_negative_coordinates_after_bbox_are_values_not_flags():
    assert glue_negative_values(["--bbox", "-10,40,-5,45", "--start", "x"]) == ["--bbox=-10,40,-5,45", "--start", "x"]


def test_beam_flags_work_alongside_ours():
    from apache_beam.options.pipeline_options import DirectOptions

    from pipeline.run import parse_and_validate

    options, spec = parse_and_validate(["--bbox", "8,47,8.1,47.1", *TIME, "--output", "/tmp/o",
                                        "--direct_num_workers=2", "--tile_px=64", "--img-size", "64"])
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert spec.plan.tile_px == 64 and spec.inference.model.img_size == 64


def test_model_options_fall_back_to_the_card_env_knobs(monkeypatch):
    from pipeline.run import parse_and_validate

    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_IMG", "128")
    monkeypatch.setenv("RS_EMBED_DYNAMICVIS_SAMPLING_SCALE", "0.2")
    _, spec = parse_and_validate(["--bbox", "8,47,8.1,47.1", *TIME, "--output", "/tmp/o"])
    assert spec.inference.model.img_size == 128 and spec.inference.model.sampling_scale == 0.2
    _, spec = parse_and_validate(["--bbox", "8,47,8.1,47.1", *TIME, "--output", "/tmp/o", "--img-size", "64"])
    assert spec.inference.model.img_size == 64  # the flag beats the env


def test_dry_run_prints_the_plan_without_earth_engine_or_model(capsys, monkeypatch, no_pipeline):
    import ee

    def forbidden(*_args, **_kwargs):
        raise AssertionError("dry run touched Earth Engine")

    monkeypatch.setattr(ee, "Initialize", forbidden)
    monkeypatch.setattr("models.DynamicVisEmbedder", forbidden)
    assert launch(["--bbox=-10,35,30,60", "--year", "2023", "--windows", "quarterly", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "x 4 window(s)" in out and "computePixels requests" in out and "GB to fetch" in out
    assert "time at the quota" in out


def test_help_lists_our_flags(capsys):
    assert launch(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--bbox", "--geojson", "--points", "--buffer-m", "--windows", "--tile-px", "--checkpoint",
                 "--skip-existing", "--bigquery-table", "--dry-run", "--gpu", "--img-size"):
        assert flag in out


# ------------------------------------------------------------------------------- text that is true

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
MESSAGE_SOURCES = ("pipeline", "transforms", "earth_engine", "models", "tiles")
_MESSAGE_CALLS = {"print", "warning", "info", "error", "exception", "warn", "debug"}


def _strings(node: ast.AST):
    for child in ast.walk(node):
        if isinstance(child, ast.Constant) and isinstance(child.value, str):
            yield child.value


def message_strings() -> dict:
    """Every string literal in a raise or a print/log call of our sources -> where it is."""
    root = Path(__file__).resolve().parents[1]
    found = {}
    for package in MESSAGE_SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                is_message = isinstance(node, ast.Raise) or (
                    isinstance(node, ast.Call) and _MESSAGE_CALLS & {getattr(node.func, "attr", None),
                                                                     getattr(node.func, "id", None)})
                if is_message:
                    for text in _strings(node):
                        found.setdefault(text, f"{path.relative_to(root)}:{node.lineno}")
    return found


# The tools with a parser of their own; a message from one of these files names flags of those tools.
_TOOL_PARSERS = {"pipeline/map.py": ("map",), "pipeline/similar.py": ("similar",),
                 "pipeline/sample.py": ("map", "similar"), "pipeline/compact.py": ("compact",)}


def _tool_parser(name: str):
    return importlib.import_module(f"pipeline.{name}").parser()


def _parser_knows(flag: str) -> bool:
    """Run the flag through the parser the launcher uses (Beam's flags and ours)."""
    from pipeline.options import _all_options_parser

    parser = _all_options_parser()
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            _, unknown = parser.parse_known_args([flag])
        except SystemExit:
            return True  # known, and it wants a value
    return flag not in unknown


def test_every_flag_that_help_or_an_error_message_suggests_exists(capsys):
    assert launch(["--help"]) == 0
    help_flags = set(FLAG.findall(capsys.readouterr().out))
    message_flags = {}
    for text, where in message_strings().items():
        for flag in FLAG.findall(text):
            message_flags.setdefault(flag, where)
    assert {"--skip-existing", "--ee-project", "--output", "--buffer-m", "--dry-run"} <= set(message_flags)
    assert len(help_flags) > 30
    missing = {flag: where for flag, where in {**dict.fromkeys(help_flags, "--help"), **message_flags}.items()
               if where.split(":")[0] not in _TOOL_PARSERS and not _parser_knows(flag)}
    assert not missing, f"suggested but unknown to the parser: {missing}"
    assert not _parser_knows("--repair-geometry")  # the check itself can fail


def test_every_flag_a_tool_suggests_exists_in_that_tool():
    """map, similar and compact have parsers of their own: their help and messages name their own flags, or the
    pipeline's (e.g. "the --output of a run")."""
    tool_flags = {}
    for text, where in message_strings().items():
        for tool in _TOOL_PARSERS.get(where.split(":")[0], ()):
            tool_flags.setdefault(tool, {}).update({flag: where for flag in FLAG.findall(text)})
    for tool in ("map", "similar", "compact"):
        tool_flags.setdefault(tool, {}).update(dict.fromkeys(FLAG.findall(_tool_parser(tool).format_help()),
                                                             "--help"))
    assert {"--input", "--tile-id"} <= set(tool_flags["similar"])
    missing = {(tool, flag): where for tool, flags in tool_flags.items() for flag, where in flags.items()
               if flag not in _tool_parser(tool)._option_string_actions and not _parser_knows(flag)}
    assert not missing, f"suggested but unknown to the tool's parser: {missing}"
    assert "--bbox" not in _tool_parser("map")._option_string_actions  # tool parsers are told apart


def test_help_lists_every_scan_backend_and_only_real_precisions(capsys):
    from models.config import ModelConfig
    from models.scan import _OPTIONAL_SCANS, SCANS

    assert launch(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    scan_help = out.rsplit("--scan SCAN", 1)[1].split("--precision", 1)[0]  # the option, not the usage line
    for name in ["auto", *SCANS, *_OPTIONAL_SCANS]:
        assert re.search(rf"\b{name}\b", scan_help), (name, scan_help)
    precision_help = out.rsplit("--precision PRECISION", 1)[1].split("--device", 1)[0].split("(default")[0]
    for value in precision_help.split("|"):
        ModelConfig(precision=value.strip())  # each value the help names is accepted
