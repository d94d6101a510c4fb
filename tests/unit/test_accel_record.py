"""The accelerator probe's record: answers kept per key, so that alternating kernels
do not pay a probe (its whole deadline here) at each switch, and nothing else is ever answered."""

import json

from harness.l0.accel import REMEMBERED, AccelChoice, recalled, remember


def key(kernel: str) -> dict:
    return {"qemu": "/usr/bin/qemu-system-x86_64", "qemu_version": "7.2.22",
            "kernel": kernel, "boot_id": "b"}


def test_answers_for_two_kernels_are_both_kept(tmp_path):
    record = tmp_path / "accel-probe.json"
    remember(record, key("dmabuf"), AccelChoice("tcg", "got nowhere"))
    remember(record, key("debug"), AccelChoice("kvm", "booted"))
    assert recalled(record, key("dmabuf")) == AccelChoice("tcg", "got nowhere")
    assert recalled(record, key("debug")) == AccelChoice("kvm", "booted")
    assert recalled(record, key("series")) is None
    assert recalled(record, {**key("dmabuf"), "boot_id": "another boot"}) is None
    assert [p.name for p in tmp_path.iterdir()] == ["accel-probe.json"]  # no partial left


def test_a_new_answer_replaces_its_key_and_the_oldest_go(tmp_path):
    record = tmp_path / "accel-probe.json"
    for n in range(REMEMBERED + 2):
        remember(record, key(f"k{n}"), AccelChoice("tcg", f"probe {n}"))
    remember(record, key(f"k{REMEMBERED + 1}"), AccelChoice("kvm", "again"))
    entries = json.loads(record.read_text())["probes"]
    assert len(entries) == REMEMBERED
    assert [e["key"]["kernel"] for e in entries][:2] == [f"k{REMEMBERED + 1}", f"k{REMEMBERED}"]
    assert recalled(record, key(f"k{REMEMBERED + 1}")) == AccelChoice("kvm", "again")
    assert recalled(record, key("k0")) is None and recalled(record, key("k1")) is None


def test_the_one_answer_records_of_before_are_read(tmp_path):
    record = tmp_path / "accel-probe.json"
    record.write_text(json.dumps({"key": key("dmabuf"), "accel": "tcg", "reason": "old"}))
    assert recalled(record, key("dmabuf")) == AccelChoice("tcg", "old")
    remember(record, key("debug"), AccelChoice("tcg", "new"))
    assert recalled(record, key("dmabuf")) == AccelChoice("tcg", "old")


def test_an_unreadable_record_answers_nothing(tmp_path):
    record = tmp_path / "accel-probe.json"
    for text in ("{", "[]", '{"probes": [1, {"key": {}}]}', '{"probes": null}'):
        record.write_text(text)
        assert recalled(record, key("dmabuf")) is None
    remember(record, key("dmabuf"), AccelChoice("tcg", "fresh"))
    assert recalled(record, key("dmabuf")) == AccelChoice("tcg", "fresh")
