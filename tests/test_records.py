import json
import os
import subprocess
import sys
import textwrap

import pytest

from vlm_rlaif.data import (
    InstructionRecord,
    JsonlWriter,
    MCQRecord,
    PreferenceRecord,
    QARecord,
    VCGConsistencyRecord,
    VCGRecord,
    done_ids,
    read_records,
    resolve_under,
    write_json_array,
)
from vlm_rlaif.errors import RecordError

INSTRUCTION = {
    "id": "v1_0",
    "video": "videos/v1.mp4",
    "conversations": [
        {"from": "human", "value": "<video>\nWhat colour is the ball?"},
        {"from": "gpt", "value": "It is red."},
    ],
}


def test_instruction_record_fields_and_round_trip(tmp_path):
    rec = InstructionRecord.model_validate({**INSTRUCTION, "src_data": "toy", "extra_field": 7})
    assert rec.question == "What colour is the ball?"
    assert rec.answer == "It is red."
    assert rec.video_source == "videos/v1.mp4"
    out = tmp_path / "x.json"
    write_json_array(out, [rec])
    again = read_records(out, InstructionRecord)[0]
    assert again.to_json_dict() == rec.to_json_dict()
    assert again.to_json_dict()["extra_field"] == 7  # unknown fields survive a round trip
    assert again.to_json_dict()["conversations"][0]["from"] == "human"


def test_images_instead_of_video():
    rec = InstructionRecord.model_validate(
        {**{k: v for k, v in INSTRUCTION.items() if k != "video"}, "images": ["f/1.jpg", "f/2.jpg"]}
    )
    assert rec.video_source == ["f/1.jpg", "f/2.jpg"]


def test_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "prefs.json"
    good = {
        "id": "p0",
        "video": "a.mp4",
        "conversations": [{"from": "human", "value": "<video>\nq"}],
        "output_1": {"value": "a"},
        "output_2": {"value": "b"},
        "preference": 1,
    }
    bad = dict(good, id="p1", preference=3)
    missing = {k: v for k, v in good.items() if k != "output_2"} | {"id": "p2"}
    path.write_text("[\n" + json.dumps(good) + ",\n" + json.dumps(bad) + "\n]")
    with pytest.raises(RecordError) as err:
        read_records(path, PreferenceRecord)
    assert f"{path}:3 (id p1)" in str(err.value)
    assert "field 'preference'" in str(err.value)

    path.write_text("\n".join(json.dumps(r) for r in [good, missing]) + "\n")
    path = path.rename(tmp_path / "prefs.jsonl")
    with pytest.raises(RecordError) as err:
        read_records(path, PreferenceRecord)
    assert f"{path}:2 (id p2)" in str(err.value) and "field 'output_2'" in str(err.value)


def test_preference_chosen_rejected():
    rec = PreferenceRecord.model_validate(
        {
            "id": 3,
            "images": ["1.jpg"],
            "conversations": [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": ""}],
            "output_1": {"value": "one"},
            "output_2": {"value": "two"},
            "preference": 2,
        }
    )
    assert rec.id == "3" and rec.chosen == "two" and rec.rejected == "one"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "a", "conversations": [{"from": "human", "value": "q"}]}, "neither 'video' nor 'images'"),
        ({**INSTRUCTION, "conversations": []}, "at least 1 item"),
        ({**INSTRUCTION, "conversations": [{"from": "gpt", "value": "x"}]}, "start with a 'human' turn"),
        ({**INSTRUCTION, "conversations": [{"from": "bot", "value": "x"}]}, "field 'conversations.0.from'"),
        ({**INSTRUCTION, "clip": {"index": 3, "count": 3}}, "clip index 3 is not below clip count 3"),
    ],
)
def test_invalid_instruction_records(tmp_path, record, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RecordError, match="r.jsonl:1") as err:
        read_records(path, InstructionRecord)
    assert message in str(err.value)


def test_benchmark_layouts(tmp_path):
    (tmp_path / "g.json").write_text(json.dumps([{"video_name": "v_1", "Q": "q", "A": "a"}]))
    (tmp_path / "c.json").write_text(json.dumps([{"video_name": "v_1", "Q1": "q", "Q2": "q2", "A": "a"}]))
    (tmp_path / "qa.json").write_text(
        json.dumps([{"video_name": "v_1", "question_id": 17, "question": "q", "answer": "yes"}])
    )
    assert read_records(tmp_path / "g.json", VCGRecord)[0].Q == "q"
    assert read_records(tmp_path / "c.json", VCGConsistencyRecord)[0].Q2 == "q2"
    assert read_records(tmp_path / "qa.json", QARecord)[0].question_id == "17"
    with pytest.raises(RecordError, match="not one of the candidates"):
        (tmp_path / "m.json").write_text(
            json.dumps([{"video_name": "v", "question_id": 1, "question": "q", "candidates": ["a", "b"], "answer": "c"}])
        )
        read_records(tmp_path / "m.json", MCQRecord)


def test_malformed_json_names_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('[\n{"video_name": "a", "Q": "q", "A": "a"},\n{"video_name": "b", "Q": \n]')
    with pytest.raises(RecordError, match=r"x.json:\d+: invalid JSON"):
        read_records(path, VCGRecord)
    (tmp_path / "y.json").write_text('{"not": "an array"}')
    with pytest.raises(RecordError, match="expected a JSON array"):
        read_records(tmp_path / "y.json", VCGRecord)
    with pytest.raises(RecordError, match="file not found"):
        read_records(tmp_path / "missing.jsonl", VCGRecord)


def test_non_utf8_file_is_a_record_error_naming_file_and_line(tmp_path):
    # Latin-1 "é" (0xe9) on line 3: a file saved in the wrong encoding.
    for name in ("x.json", "x.jsonl"):
        path = tmp_path / name
        rows = [b'{"video_name": "a", "Q": "q", "A": "a"}', b'{"video_name": "b", "Q": "q", "A": "a"}', b'{"video_name": "caf\xe9", "Q": "q", "A": "a"}']
        body = b"[\n" + b",\n".join(rows) + b"\n]\n" if name.endswith(".json") else b"\n".join(rows) + b"\n"
        path.write_bytes(body)
        line = 4 if name.endswith(".json") else 3
        with pytest.raises(RecordError, match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9"):
            read_records(path, VCGRecord)


def test_jsonl_writer_survives_a_kill_and_resumes(tmp_path):
    out = tmp_path / "out.jsonl"
    script = textwrap.dedent(
        f"""
        import os, sys
        from vlm_rlaif.data import JsonlWriter
        w = JsonlWriter({str(out)!r})
        for i in range(3):
            w.write({{"id": f"r{{i}}", "value": "x" * 10}})
        w._f.write('{{"id": "r3", "val')  # a record torn by the kill
        w._f.flush()
        os._exit(1)
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 1
    assert done_ids(out) == {"r0", "r1", "r2"}
    with pytest.raises(RecordError):  # without repair the torn line is an error, not silence
        read_records(out, VCGRecord)
    with JsonlWriter(out) as w:  # reopening truncates the torn tail, then appends
        w.write({"id": "r3", "value": "y"})
    lines = out.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["r0", "r1", "r2", "r3"]


def test_paths_resolve_under_root(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    assert resolve_under(root, "sub/a.mp4") == (root / "sub" / "a.mp4").resolve()
    assert resolve_under(root, "sub/../a.mp4") == (root / "a.mp4").resolve()
    for bad in ["../secret.mp4", "/etc/passwd", "sub/../../x"]:
        with pytest.raises(RecordError, match="escapes the video root"):
            resolve_under(root, bad, where="f.json:3")
    os.symlink("/etc", root / "link")
    with pytest.raises(RecordError, match="escapes"):
        resolve_under(root, "link/passwd")


def test_image_placeholder_of_the_public_files_is_stripped():
    # SFT, PPO_init and the RL prompts open human turns with "<image>\n", not "<video>\n".
    from vlm_rlaif.data.records import to_messages

    record = InstructionRecord.model_validate(
        {
            "id": "v1_1",
            "video": "videos/v1.mp4",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the ball?"},
                {"from": "gpt", "value": "It is red."},
            ],
        }
    )
    assert record.question == "What colour is the ball?"
    assert [m["content"] for m in to_messages(record.conversations)] == ["What colour is the ball?", "It is red."]
    pair = PreferenceRecord.model_validate(
        {
            "id": "p1",
            "video": "a.mp4",
            "conversations": [{"from": "human", "value": "<video>\n<image>\nq"}],
            "output_1": {"value": "a"},
            "output_2": {"value": "b"},
            "preference": 1,
        }
    )
    assert pair.question == "q"
