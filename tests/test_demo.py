"""The demo end to end at --quick size (the CI smoke run), its report, resume after a kill, and the
pipeline's reuse / redo rules."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from vlm_rlaif.demo import run_demo, toy_recipe_path
from vlm_rlaif.errors import RunDirError
from vlm_rlaif.pipeline import DEFAULT_STAGES, STAGES, Recipe, quick_overrides, run_pipeline, stage_overrides

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    report = run_demo(out, quick=True, seed=0)
    return out, report


def test_quick_demo_runs_every_stage_and_reports(quick_run):
    """The default demo starts from the shipped foundation: its SFT stage is that model (no vision
    pretraining, no SFT run), and every later stage runs."""
    out, report = quick_run
    text = report.read_text()
    for stage in DEFAULT_STAGES:  # grpo runs only when named
        if stage == "vision":
            assert not (out / "vision").exists()
            continue
        assert (out / ("world/manifest.json" if stage == "toyworld" else f"{stage}/summary.json")).exists(), stage
    sft = json.loads((out / "sft" / "summary.json").read_text())
    assert sft["foundation"].endswith("toy_sft") and "| sft | shipped |" in text
    for heading in ("Does the clip context", "AI feedback", "Reward model", "PPO", "SFT vs RLAIF", "Sample answers"):
        assert heading in text
    assert "Quick run" in text
    for png in ("judge_context.png", "ppo_curves.png", "eval_scores.png"):
        assert (out / png).stat().st_size > 1000
    comparison = json.loads((out / "comparison.json").read_text())
    qa = next(row for row in comparison if row["measure"].startswith("QA accuracy"))
    assert set(qa["models"]) == {"sft", "policy_init", "rlaif"} and set(qa["vs_baseline"]) == {"policy_init", "rlaif"}


def test_rerun_reuses_finished_stages_and_says_so(quick_run):
    """A rerun that reuses every stage keeps, per stage, the seconds of the invocation that made it
    (not the moment of reusing it), and says it reused them."""
    out, _ = quick_run
    first = json.loads((out / "demo_history.jsonl").read_text().splitlines()[0])["stages"]
    statuses, lines = {}, []
    report = run_demo(out, quick=True, seed=0, on_stage=lambda r: statuses.update({r.name: r.status}), progress=lines.append)
    assert set(statuses.values()) == {"reused"} and "sft" in statuses
    text = report.read_text()
    assert "continued earlier work" in text and "reused sft, toyworld, feedback" in text
    assert f"| eval | reused | {first['eval']['seconds']:.1f} |" in text
    assert len((out / "demo_history.jsonl").read_text().splitlines()) == 2
    # the stage counter, and nothing left to do once every stage is known to be reused
    assert lines[0] == lines[0].split(" (")[0] + " (elapsed 0:00, about 0:00 left)" and lines[0].startswith("stage 1/7 sft: starting")
    assert any(line.startswith("eval ") and "(stage 7/7 done; elapsed" in line for line in lines)


def test_a_changed_config_is_refused_then_redone_with_later_stages(quick_run, tmp_path):
    out, _ = quick_run
    recipe = toy_recipe_path()
    overrides = quick_overrides(recipe)
    overrides["rm"] = overrides.get("rm", []) + ["center_coef=0.01"]
    changed = Recipe(recipe, {"run_dir": str(out), "seed": 0}, overrides)
    with pytest.raises(RunDirError, match="stage rm .* finished with a different config .*center_coef.*--redo rm"):
        run_pipeline(changed, only=["rm"])
    statuses = {r.name: r.status for r in run_pipeline(changed, only=["rm", "ppo"], redo=["rm"])}
    assert statuses == {"rm": "redone", "ppo": "redone"}


def test_stage_overrides_parse():
    assert stage_overrides(["sft.train.lr=1e-3", "ppo.seed=2"]) == {"sft": ["train.lr=1e-3"], "ppo": ["seed=2"]}
    with pytest.raises(Exception, match="must start with a stage name"):
        stage_overrides(["train.lr=1e-3"])


def test_demo_resumes_after_a_kill(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "vlm_rlaif.cli", "demo", "--quick", "--from-scratch", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "sft" / "summary.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "sft" / "summary.json").exists(), "the demo did not finish SFT"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[demo] ")]
    statuses = dict(line.split()[1:3] for line in lines if len(line.split()) >= 3 and line.split()[1] in STAGES)
    assert statuses["toyworld"] == "reused" and statuses["vision"] == "reused" and statuses["sft"] == "reused"
    assert statuses["eval"] in ("ran", "resumed")
    assert "continued earlier work" in (out / "report.md").read_text()


def test_comparison_counts_an_unparsed_choice_as_wrong_like_the_eval_stage(tmp_path):
    """Multiple choice: a reply naming no option is wrong (eval.aggregate); the report's paired
    comparison must not drop those items, or an off-format model would look better."""
    from vlm_rlaif.demo.report import compare_models

    def write(model, rows):
        path = tmp_path / "eval" / "judgements" / model / "mcq.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"criterion": "choice", **r}) + "\n" for r in rows))

    write("sft", [{"id": f"q{i}", "status": "ok", "yes": i < 2} for i in range(4)])  # 2 of 4 right
    write("rlaif", [{"id": "q0", "status": "ok", "yes": True}, {"id": "q1", "status": "invalid", "yes": None},
                    {"id": "q2", "status": "invalid", "yes": None}, {"id": "q3", "status": "invalid", "yes": None}])
    row = next(r for r in compare_models(tmp_path, ["sft", "rlaif"]) if r["measure"].startswith("multiple-choice"))
    assert row["models"]["rlaif"]["value"] == pytest.approx(25.0)  # 1 of 4, not 1 of 1
    assert row["models"]["sft"]["value"] == pytest.approx(50.0)
    assert row["vs_baseline"]["rlaif"]["value"] == pytest.approx(-25.0)  # paired over all 4 items


@pytest.mark.parametrize("interval, warned", [((0.41, 0.49), True), ((0.47, 0.55), True), ((0.52, 0.60), False)])
def test_report_says_when_the_judge_is_not_better_than_chance(tmp_path, interval, warned):
    from vlm_rlaif.demo.report import _judge_section

    def condition(rate):
        estimate = {"rate": rate, "ci95": list(interval), "n": 500}
        return {"mean_of_orders": estimate, "kept_labels": estimate, "kept": 500, "order_agreement": 0.2}

    summary = {"pairs": 600, "oracle_ties": 100, "context": condition(sum(interval) / 2),
               "no_context": condition(sum(interval) / 2), "difference_context_minus_no_context": {"n": 500, "difference": 0.0, "ci95": [-0.03, 0.03]}}
    (tmp_path / "judge_context").mkdir()
    (tmp_path / "judge_context" / "summary.json").write_text(json.dumps(summary))
    text = "\n".join(_judge_section(tmp_path))
    assert ("not measurably better than chance" in text) == warned


def test_same_numbers_in_fresh_processes_with_different_hash_seeds(tmp_path):
    """Two `demo --quick --from-scratch` runs of one seed in fresh processes whose str hashes differ:
    every record, metric, summary, checkpoint and plot is the same (timings aside), and so is the
    report; vision pretraining and SFT included."""
    from fresh_process import differing_files, run_cli_with_hash_seeds

    out = tmp_path / "run"
    a, b = run_cli_with_hash_seeds(["demo", "--quick", "--from-scratch", "--out", str(out)], out)
    assert [name for name in differing_files(a, b) if name != "report.md"] == []

    def numbers(report):  # the report without its wall-clock lines (stage times, throughput)
        lines = report.read_text().splitlines()
        return [line for line in lines if not re.search(r"\| (ran|reused|resumed|redone) \||per minute|seconds", line)]

    assert numbers(a / "report.md") == numbers(b / "report.md")


def test_verdict_lines_follow_the_intervals(tmp_path):
    from vlm_rlaif.demo.report import verdict_lines

    def write(stage, summary):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / "summary.json").write_text(json.dumps(summary))

    def judge(rate, ci, diff, diff_ci):
        write("judge_context", {"context": {"mean_of_orders": {"rate": rate, "ci95": ci, "n": 100}},
                                "difference_context_minus_no_context": {"difference": diff, "ci95": diff_ci, "n": 100}})

    judge(0.74, [0.70, 0.78], 0.14, [0.09, 0.19])
    write("rm", {"eval": {"heldout": {"oracle": {"reward_model": {"rate": 0.72, "ci95": [0.65, 0.79], "n": 90}}}}})
    text = "\n".join(verdict_lines(tmp_path))
    assert "self-judge with its clip context beats chance" in text
    assert "Context helped the judge: +0.140 [0.090, 0.190]" in text
    assert "The reward model learnt the true preferences" in text
    judge(0.52, [0.45, 0.59], -0.08, [-0.12, -0.03])
    text = "\n".join(verdict_lines(tmp_path))
    assert "is not measurably better than chance" in text and "Context hurt the judge" in text
    judge(0.52, [0.45, 0.59], 0.01, [-0.03, 0.05])
    assert "No measurable effect of context" in "\n".join(verdict_lines(tmp_path))


def test_report_leads_with_verdicts_including_rlaif_vs_sft(quick_run):
    _, report = quick_run
    text = report.read_text()
    verdicts = text[text.index("## Verdicts"):text.index("## 1.")]
    assert "QA accuracy" in verdicts and "(RLAIF minus SFT, paired)" in verdicts
    assert "Answers with judge phrasing: SFT " in verdicts and "Multiple-choice replies that name no option (counted as wrong)" in verdicts
    # every section leads with its verdicts
    for heading, lead in (("## 1.", "- The self-judge"), ("## 2.", "- The kept preference labels"), ("## 3.", "- The reward model"),
                          ("## 4.", "What PPO itself changed"), ("## 5.", "- ")):
        assert text[text.index(heading):].split("\n")[2].startswith(lead), heading
    section5 = text[text.index("## 5."):text.index("## 6.")]
    assert "| multiple-choice replies naming no option (counted wrong) |" in section5
    samples = text[text.index("## 6."):]
    assert "| QA: question | truth | sft | policy_init | rlaif |" in samples and "| descriptions: question |" in samples
    qa_rows = samples.split("| QA: question")[1].split("\n\n")[0].splitlines()[2:]
    assert len(qa_rows) == 3 and all(row.count(" | ") == 4 for row in qa_rows)


def test_stage_seconds_keep_the_invocation_that_made_each_stage(tmp_path):
    from vlm_rlaif.demo.report import stage_seconds
    from vlm_rlaif.pipeline import StageResult

    rows = [{"stages": {"rm": {"status": "ran", "seconds": 50.0}, "ppo": {"status": "ran", "seconds": 9.0}}},
            {"stages": {"rm": {"status": "reused", "seconds": 0.1}, "ppo": {"status": "resumed", "seconds": 30.0}}},
            {"stages": {"rm": {"status": "reused", "seconds": 0.1}, "ppo": {"status": "redone", "seconds": 70.0}}}]
    (tmp_path / "demo_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    results = [StageResult("rm", tmp_path, "reused", 0.1, {}), StageResult("ppo", tmp_path, "resumed", 30.0, {})]
    assert stage_seconds(tmp_path, results) == {"rm": 50.0, "ppo": 39.0}  # resumed: both parts
    (tmp_path / "demo_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert stage_seconds(tmp_path, results) == {"rm": 50.0, "ppo": 70.0}  # redone: only the new run


def test_chance_levels_of_the_accuracy_panels(quick_run):
    from vlm_rlaif.demo.report import MCQ_MEASURE, QA_MEASURE, chance_levels

    out, _ = quick_run
    levels = chance_levels(out)
    mcq = json.loads((out / "world" / "eval" / "mcq.json").read_text())
    assert levels[MCQ_MEASURE][0] == pytest.approx(100 * sum(1 / len(r["candidates"]) for r in mcq) / len(mcq))
    assert 0 < levels[QA_MEASURE][0] <= 100 and levels[QA_MEASURE][1] == "most common answer per question type"
