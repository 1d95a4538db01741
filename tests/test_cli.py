import json
import subprocess
import sys

import pytest

from cli.main import main, parser


@pytest.mark.parametrize("command", [[], *[[c] for c in parser()._subparsers._group_actions[0].choices]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: pfcr" in capsys.readouterr().out


def test_models_lists_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit_fmnist" in out and "swin_fmnist" in out


def test_bad_model_is_a_clear_error_not_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "cli.main", "eval", "vit_nonexistent", "--limit", "4"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown model 'vit_nonexistent'" in proc.stderr and "Traceback" not in proc.stderr


def test_train_refuses_non_zoo_model(capsys, results):
    assert main(["train", "resnet18", "--epochs", "1"]) == 2
    assert "trains zoo models" in capsys.readouterr().err


def test_real_user_path_timm_name_checkpoint_imagefolder(tmp_path, results, capsys):
    """A timm name + local checkpoint + ImageNet-layout folder, as a user with their own model runs it."""
    from tests.conftest import image_folder, user_model

    ckpt, kwargs = user_model(tmp_path, num_classes=3)
    image_folder(tmp_path / "val", ("a", "b", "c"), per_class=2, size=36)
    argv = ["eval", "vit_tiny_patch16_224", "--checkpoint", str(ckpt), "--data", str(tmp_path / "val"),
            "--model-kwargs", json.dumps(kwargs), "--confusion"]
    assert main(argv) == 0
    rec = json.loads(next(results.glob("eval_vit_tiny_patch16_224_*.json")).read_text())
    sha = rec["data"].pop("sha256")  # of the files' paths, classes and bytes: which images these were
    assert rec["data"] == {"name": str(tmp_path / "val"), "split": "folder", "size": 6} and len(sha) == 64
    assert sum(map(sum, rec["metrics"]["confusion"])) == 6
    # Without the options it was trained with, the checkpoint does not fit, and the user is told so.
    assert main(argv[:6]) == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_report_rewrites_readme(tmp_path, results):
    from core.records import write_record
    from tests.test_records import _record

    write_record(_record(metrics={"top1": 0.5, "top5": 0.75}), results)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nstale\n<!-- results:end -->\noutro\n")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and "| m | d | fp32 | FP32 | 50.0 | 75.0 | 3 |" in text and text.endswith("outro\n")
    assert (tmp_path / "rep" / "accuracy.csv").read_text().startswith("model,data,method")
    readme.write_text("no markers")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "rep"), "--readme", str(readme)]) == 2


def test_zoo_eval_reproduces_card(results, capsys):
    """The committed weights give the accuracy their card claims, on the real test set."""
    from core.data import fmnist_dir
    from core.models import ZOO

    if not fmnist_dir().is_dir():
        pytest.fail("Fashion-MNIST is missing: run ./suite test, which installs dataset-fashion-mnist")
    for name, entry in ZOO.items():
        card = entry.card()
        assert card is not None, f"zoo model {name} has no card; train it with `pfcr train {name}`"
        assert main(["eval", name, "--results", str(results)]) == 0
        rec = json.loads(next(results.glob(f"eval_{name}_*.json")).read_text())
        assert rec["model"]["checkpoint_sha256"] == card["sha256"]
        assert rec["metrics"]["top1"] == pytest.approx(card["test_top1"], abs=2e-3)
        assert rec["data"]["size"] == 10000


def test_main_stages_are_valid_command_lines(tmp_path):
    """Every stage of every part parses as a `pfcr` command line of plain strings, short and --full."""
    from cli.pipeline import stages

    for full in (False, True):
        todo = stages(tmp_path, full, None)
        assert len({title for title, _ in todo}) == len(todo)  # titles key the resume state
        for title, argv in todo:
            assert parser().parse_args(argv).func, title
    assert json.dumps(todo)


def test_main_stages_rerun_when_the_suite_code_changes(tmp_path, monkeypatch):
    """The resume key covers the suite's sources: an edited module makes every stage stale."""
    from cli import pipeline

    pkg = tmp_path / "suite_pkg_for_digest"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pipeline, "PACKAGES", ("suite_pkg_for_digest",))
    pipeline.code_digest.cache_clear()
    before = pipeline._inputs_digest(["eval", "vit_fmnist"])
    (pkg / "kernels.py").write_text("SCALE = 2\n")
    pipeline.code_digest.cache_clear()
    assert pipeline._inputs_digest(["eval", "vit_fmnist"]) != before
    pipeline.code_digest.cache_clear()


@pytest.mark.slow
def test_main_job_runs_and_resumes(tmp_path, capsys):
    """The main job end to end on a slice of the test set; every part writes its records; a second
    run skips every stage."""
    from cli.pipeline import stages

    argv = ["main", "--limit", "200", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "rep")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "quantize vit_fmnist W3A3 with PFCR" in first and "Post-training quantization" in first
    for kind in ("quantize", "export", "run"):  # ViT W4A4 and W3A3, Swin W4A4
        assert len(list((tmp_path / "res").glob(f"{kind}_*_fmnist_*.json"))) == 3, kind
    assert len(list((tmp_path / "res").glob("bench_deit_tiny_patch16_224_*.json"))) == 2  # real size, 1 and 2 threads
    assert (tmp_path / "rep" / "report.html").exists()
    kinds = {p.name.split("_")[0] for p in (tmp_path / "res").rglob("*.json")}
    assert {"eval", "quantize", "export", "run", "compile", "bench", "simulate", "sensor"} <= kinds
    assert main(argv) == 0
    second = capsys.readouterr().out
    n = len(stages(tmp_path / "res", full=False, limit=200))
    assert second.count("up to date") == second.count("== stage") == n


def test_help_loads_neither_torch_nor_tvm():
    """`pfcr --help` and argument errors answer at once: building the parser of every command imports
    no heavy library (they load inside the commands)."""
    code = ("import sys\nfrom cli.main import parser\nparser()\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules}\n"
            "               & {'torch', 'tvm', 'timm', 'pandas', 'matplotlib'})\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_main_job_stops_at_a_failed_or_interrupted_stage_and_resumes_it(tmp_path, monkeypatch, capsys):
    """A stage whose command returns non-zero (the host bench's 130 after Ctrl-C), raises, or is
    interrupted is not marked done: `pfcr main` stops with its status (130 for an interrupt, 2 and
    the stage's name for a failure), and the next run resumes at that stage. It used to mark the
    interrupted bench done and finish with exit 0, and the rerun skipped it."""
    from cli import pipeline
    from core.errors import SuiteError
    from tvm_backends import commands

    todo = [("first stage", ["bench", "first"]), ("host bench", ["bench", "second"]),
            ("last stage", ["bench", "third"])]
    monkeypatch.setattr(pipeline, "stages", lambda results, full, limit, real=False: todo)
    monkeypatch.setattr("reports.summary.write_summary", lambda *a, **kw: "report")
    ran, outcome = [], {}

    def bench(args):
        ran.append(args.artifact)
        result = outcome.get(args.artifact, 0)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(commands, "cmd_bench", bench)
    res = tmp_path / "res"
    argv = ["main", "--results", str(res), "--out", str(tmp_path / "rep")]

    def state() -> set[str]:
        return set(json.loads((res / ".main-state.json").read_text()))

    for result, status, message in ((130, 130, "interrupted"), (KeyboardInterrupt(), 130, "interrupted"),
                                    (3, 2, "failed with exit status 3"),
                                    (SuiteError("the board went away"), 2, "failed: the board went away")):
        outcome["second"] = result
        ran.clear()
        assert main(argv) == status
        err = capsys.readouterr().err
        assert "stage 2/3 (host bench" in err and message in err and "resume" in err
        assert state() == {"first stage"} and "third" not in ran
    outcome["second"] = 0
    ran.clear()
    assert main(argv) == 0
    assert ran == ["second", "third"] and state() == {"first stage", "host bench", "last stage"}
    ran.clear()
    assert main(argv) == 0 and ran == []
