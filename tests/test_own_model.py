"""Your own model, end to end: ``--model package.module:factory`` in every command, models from the
``search.models`` entry-point group, ``inspect --list``, the listing of nonlinearities that are not
ReLU sites (and the warning about them), and ``--version``.

The factories live in a module written into a temporary folder outside the package, on ``sys.path``
for in-process calls and on ``PYTHONPATH`` for subprocesses (a study's Ray workers inherit it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import search.inspect
import search.linearize
import search.report
import search.run
import search.train_teacher
from search.checkpoint import load_model, save_model
from search.cli import package_version
from search.errors import SearchError
from search.nonlinear import kind_totals, nonlinear_table
from search.relu import linearizable, relu_count, sites
from search.spaces import build_model, list_models, model_options
from search.teacher import teacher_key
from tests.conftest import PROJECT_ROOT
from tests.helpers import cli, load, study_env

MODULE = "own_model_factories"
FACTORIES = '''
import torch.nn.functional as F
from torch import nn


def make(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8), width: int = 8) -> nn.Module:
    """Two convolutions with a ReLU after each."""
    return nn.Sequential(
        nn.Conv2d(input_size[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


class Costly(nn.Module):
    """Hardswish and SiLU modules, max pooling and a functional GELU; one ReLU."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.act = nn.Hardswish()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.silu = nn.SiLU()
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6 * 4 * 4, num_classes)

    def forward(self, x):
        x = self.pool(self.silu(self.conv2(self.act(self.conv(x)))))
        return self.fc(self.relu(F.gelu(x)).flatten(1))


def costly(num_classes: int = 10, input_size: tuple[int, int, int] = (1, 8, 8)) -> nn.Module:
    return Costly(num_classes, input_size[0])


def raises(num_classes: int = 10) -> nn.Module:
    raise ValueError("width must be even\\nand this second line is not shown")


def not_a_module(num_classes: int = 10):
    return [num_classes]


def no_default(num_classes: int = 10, *, width: int) -> nn.Module:
    return nn.Linear(width, num_classes)


class Untraceable(nn.Module):
    def forward(self, x):
        if x.sum() >= 0:  # data-dependent: torch.fx cannot trace it, and the ReLU is functional
            x = F.relu(x)
        return x.flatten(1)


def untraceable(num_classes: int = 10) -> nn.Module:
    return Untraceable()
'''


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder outside the package holding the factories module, on ``sys.path`` for this file."""
    folder = tmp_path_factory.mktemp("own-model")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(FACTORIES))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def one_error(code: int, out: str, err: str) -> str:
    """The single ``error:`` line of a failed command (asserting exit 2 and nothing on stdout)."""
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
    return lines[0]


def total_relus(out: str) -> int:
    last = out.strip().splitlines()[-1]
    assert last.startswith("total_relus="), out
    return int(last.removeprefix("total_relus="))


# -- an import path wherever a model name goes -------------------------------------------------------


def test_inspect_counts_a_model_from_an_import_path(module_dir: Path) -> None:
    code, out, _ = cli(search.inspect, ["--model", f"{MODULE}:make", "--input", "1x8x8", "--set", "width=4"])
    assert code == 0 and total_relus(out) == 2 * 4 * 8 * 8
    assert f"model {MODULE}:make (width=4)" in out and "other nonlinearities: none" in out
    assert "stem ReLU: not identified" in out  # its stages are its top-level modules
    assert model_options(f"{MODULE}:make") == {"width": (int, 8)}
    assert "width must be" not in out


def test_linearize_a_model_from_an_import_path_and_reload_it(module_dir: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "own.pt"
    code, out, err = cli(search.linearize, ["--strategy", "snl", "--dataset", "digits", "--model", f"{MODULE}:make",
                                            "--budget", "10%", "--set", "width=4", "--teacher-epochs", "1",
                                            "--set", "max_epochs=20", "--set", "finetune_epochs=1", "--out", str(out_path)])
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("relus=") and "warning:" not in err
    relus = int(last.split()[0].removeprefix("relus="))
    assert 0 < relus <= 51  # 10% of 512
    model, payload = load_model(out_path)  # rebuilt from the import path and options the checkpoint records
    assert payload["model"] == f"{MODULE}:make" and payload["options"] == {"width": 4}
    assert relu_count(model, (1, 8, 8)) == relus


def test_checkpoint_of_an_imported_model_reloads_with_the_same_outputs(module_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(f"{MODULE}:make", num_classes=10, input_size=(1, 8, 8), width=4)
    first = sites(model)[0]
    first.set_mask(torch.rand(first.mask_shape("pixel")) > 0.5)
    save_model(model, tmp_path / "m.pt", f"{MODULE}:make", {"width": 4}, 10, (1, 8, 8))
    loaded, _ = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 1, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))
    assert relu_count(loaded, (1, 8, 8)) == relu_count(model, (1, 8, 8)) < 512


def test_torchvision_resnet18_by_import_path_counts_like_its_conversion() -> None:
    shape = (3, 224, 224)
    code, out, _ = cli(search.inspect, ["--model", "torchvision.models:resnet18", "--input", "3x224x224"])
    expected = relu_count(linearizable(torchvision.models.resnet18(num_classes=10), shape), shape)
    assert code == 0 and total_relus(out) == expected == 2_308_096
    assert "MaxPool" in out and "200,704" in out  # its stem's 3x3 max pool: 64 x 56 x 56 outputs


@pytest.mark.parametrize(("sets", "expected"), [
    (["nope=1"], "unknown option 'nope' for model torchvision.models:resnet18; accepted: progress, weights"),
    (["progress=maybe"], "bad value 'maybe' for progress: expected true or false"),
    (["weights=foo"], "bad value 'foo' for weights: expected one of IMAGENET1K_V1"),
])
def test_bad_options_of_an_imported_factory_are_one_line(sets: list[str], expected: str) -> None:
    argv = ["--model", "torchvision.models:resnet18", "--input", "3x32x32", *(t for s in sets for t in ("--set", s))]
    assert expected in one_error(*cli(search.inspect, argv))


@pytest.mark.parametrize(("model", "expected"), [
    ("nomodule:make", ("cannot import module 'nomodule' (ModuleNotFoundError: No module named 'nomodule'); "
                       "is the folder holding it on PYTHONPATH?")),
    ("math:nothing", "module 'math' has no attribute 'nothing'"),
    ("math:pi", "math:pi is a float, not a callable model factory"),
    ("math:sqrt", "the factory does not take num_classes"),
    ("bad-name:make", "bad model import path 'bad-name:make': expected package.module:factory"),
    (f"{MODULE}:raises", "the factory raised ValueError: width must be even"),
    (f"{MODULE}:not_a_module", "the factory returned a list, not a torch.nn.Module"),
    (f"{MODULE}:no_default", "option 'width' of the factory has no default; a factory's options must be keyword arguments"),
    (f"{MODULE}:untraceable", "cannot convert Untraceable"),
])
def test_bad_factories_are_one_error_line_and_exit_2(module_dir: Path, model: str, expected: str) -> None:
    line = one_error(*cli(search.inspect, ["--model", model, "--input", "1x8x8"]))
    assert line.startswith(f"error: model {model}: ") or "bad model import path" in line
    assert expected in line and "second line" not in line


def test_a_failing_factory_fails_in_every_command(module_dir: Path, tmp_path: Path) -> None:
    for module, extra in ((search.linearize, ["--strategy", "snl", "--budget", "10%", "--dry-run"]),
                          (search.train_teacher, ["--dry-run"]),
                          (search.run, ["--strategy", "snl", "--dry-run", "--run-dir", str(tmp_path / "run")])):
        line = one_error(*cli(module, ["--model", f"{MODULE}:raises", *extra]))
        assert "the factory raised ValueError: width must be even" in line


def test_config_file_and_teacher_key_keep_the_import_path(module_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "own.yaml"
    config.write_text(f"strategy: snl\nmodel: {MODULE}:make\nbudget: 10%\nset: [width=4]\n")
    code, out, err = cli(search.linearize, ["--config", str(config), "--dry-run"])
    assert code == 0, err
    assert f"snl on {MODULE}:make/digits: 512 ReLUs" in out and "model options: width=4" in out
    from search.data import load_dataset
    from search.train import teacher_config
    data, recipe = load_dataset("digits"), teacher_config("digits", 1, {})
    assert teacher_key(f"{MODULE}:make", {"width": 4}, data, recipe) != teacher_key("resnet_tiny", {"width": 4}, data, recipe)


# -- other nonlinearities -----------------------------------------------------------------------------


def test_nonlinearities_that_are_not_relu_sites_are_listed_with_their_elements(module_dir: Path) -> None:
    # At 1x8x8: Hardswish on 4x8x8, SiLU on 6x8x8, MaxPool to 6x4x4, functional GELU on 6x4x4
    expected = {"Hardswish": 256, "SiLU": 384, "MaxPool": 96, "GELU": 96}
    model = build_model(f"{MODULE}:costly", num_classes=10, input_size=(1, 8, 8))
    rows = nonlinear_table(model, (1, 8, 8))
    assert [(r.place, r.kind, r.calls, r.elements) for r in rows] == [
        ("act", "Hardswish", 1, 256), ("silu", "SiLU", 1, 384), ("pool", "MaxPool", 1, 96), ("top", "GELU", 1, 96)]
    assert kind_totals(rows) == dict(sorted(expected.items(), key=lambda kv: -kv[1]))
    code, out, _ = cli(search.inspect, ["--model", f"{MODULE}:costly", "--input", "1x8x8"])
    assert code == 0 and total_relus(out) == 96
    listing = out[out.index("other nonlinearities"):]
    for kind, elements in expected.items():
        assert kind in listing and f"{elements:,}" in listing
    assert "modules and functional calls" in listing
    assert "total: SiLU 384, Hardswish 256, MaxPool 96, GELU 96" in listing


def test_attention_softmax_is_counted_as_heads_times_queries_times_keys() -> None:
    attention = nn.MultiheadAttention(8, 2, batch_first=True)

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = x.flatten(2).transpose(1, 2)  # (1, 5 tokens, 8)
            mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
            return torch.nn.functional.scaled_dot_product_attention(mixed, mixed, mixed)

    rows = nonlinear_table(Attend(), (8, 5, 1))
    assert [(r.place, r.kind, r.elements) for r in rows] == [("attention", "Softmax", 2 * 5 * 5), ("top", "Softmax", 5 * 5)]


def test_mobilenet_v3_small_lists_its_hardswish_and_hardsigmoid() -> None:
    model = build_model("torchvision.models:mobilenet_v3_small", num_classes=10, input_size=(3, 64, 64))
    by_hooks: dict[str, int] = {}

    def note(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        by_hooks[type(module).__name__] = by_hooks.get(type(module).__name__, 0) + output.numel()

    handles = [m.register_forward_hook(note) for m in model.modules() if isinstance(m, (nn.Hardswish, nn.Hardsigmoid))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    rows = nonlinear_table(model, (3, 64, 64))
    assert kind_totals(rows) == by_hooks == {"Hardswish": 66_176, "Hardsigmoid": 2_296}
    assert (rows[0].place, rows[0].kind, rows[0].elements) == ("features.0.2", "Hardswish", 16 * 32 * 32)  # the stride-2 stem


def test_linearize_warns_once_about_other_nonlinearities(module_dir: Path) -> None:
    code, _, err = cli(search.linearize, ["--strategy", "snl", "--model", f"{MODULE}:costly", "--budget", "50%", "--dry-run"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and len(err.strip().splitlines()) == 1
    assert "SiLU 384, Hardswish 256, MaxPool 96, GELU 96" in warnings[0] and "understates" in warnings[0]
    code, _, err = cli(search.linearize, ["--strategy", "snl", "--budget", "50%", "--dry-run"])  # resnet_tiny: ReLUs only
    assert code == 0 and "warning:" not in err


# -- plug-ins and --list ---------------------------------------------------------------------------


def test_list_shows_models_strategies_and_an_entry_point_model(module_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "own_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: own-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[search.models]\nown_net = {MODULE}:make\nbroken_net = nomodule:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"own_net", "broken_net", "resnet18"} <= set(list_models())
    code, out, err = cli(search.inspect, ["--list"])
    assert code == 0, err
    blocks = out.split("\n\n")
    for name in ("resnet18", "resnet34", "resnet_tiny", "wrn22_8", "cnet"):
        assert any(b.startswith(f"model {name} (built in)") for b in blocks), name
    for name in ("snl", "deepreduce", "cryptonas"):
        assert any(b.startswith(f"strategy {name}:") for b in blocks), name
    own = next(b for b in blocks if b.startswith("model own_net"))
    assert own.splitlines() == [f"model own_net (plug-in {MODULE}:make): Two convolutions with a ReLU after each.",
                                "  --set width=...  an integer (default: 8)"]
    assert any(b.startswith("model broken_net (plug-in nomodule:make): cannot be loaded:") for b in blocks)
    assert "  --set stem_stride=...  one of 1, 2 (default: 1)" in out and "  --set lam=...  a number (default: automatic)" in out
    assert relu_count(build_model("own_net", num_classes=10, input_size=(1, 8, 8), width=2), (1, 8, 8)) == 2 * 2 * 64
    assert "--list takes no other option" in one_error(*cli(search.inspect, ["--list", "--model", "resnet18"]))


def test_unknown_model_names_the_import_path_form() -> None:
    with pytest.raises(SearchError, match=r"unknown model 'nope'; accepted: .*resnet18.*, or your own as package.module:factory"):
        build_model("nope")


# -- --version ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [search.inspect, search.linearize, search.run, search.train_teacher, search.report],
                         ids=lambda m: m.__name__)
def test_version_on_every_command(module: object) -> None:
    code, out, err = cli(module, ["--version"])
    assert code == 0 and err == "" and out == f"search {package_version()}\n"
    assert package_version() not in ("", "unknown")


# -- a study ------------------------------------------------------------------------------------------


def test_two_trial_study_of_an_imported_model(module_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**study_env(), "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(module_dir)])}
    done = subprocess.run(
        [sys.executable, "-m", "search.run", "--strategy", "snl", "--model", f"{MODULE}:make", "--set", "width=4",
         "--trials", "2", "--teacher-epochs", "1", "--set", "max_epochs=20", "--set", "finetune_epochs=1", "--concurrency", "1",
         "--run-dir", str(run_dir)],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    settings = json.loads((run_dir / "run.json").read_text())
    assert settings["model"] == f"{MODULE}:make" and settings["model_options"] == {"width": 4}
    summary = re.search(r"(\d+) complete, \d+ pruned early, \d+ infeasible, (\d+) failed", done.stdout)
    assert summary and int(summary[1]) >= 2 and summary[2] == "0", done.stdout[-2000:]  # SNL trials may add mask-path trials
    saved = sorted(run_dir.glob("trials/*/model*.pt"))
    assert saved
    model, payload = load_model(saved[0])
    assert payload["model"] == f"{MODULE}:make" and relu_count(model, (1, 8, 8)) <= 512
    # ... but only with --path-sharing (tests/test_path_sharing.py): without it, as here, a trial keeps only its target
    trials = load(run_dir)[1].get_trials()
    assert len(trials) == 2 and not [t for t in trials if "path_of" in t.user_attrs]
    for trial in trials:
        assert sorted(p.name for p in (run_dir / "trials" / str(trial.number)).glob("*.pt")) == ["model.pt"]
