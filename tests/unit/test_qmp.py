"""The QMP client's words when a QEMU stops answering: a main loop stuck in the kernel
keeps its socket open and says nothing, which is not a connection that went."""

import json
import socket
import threading

import pytest

from harness.base.deadline import Deadline
from harness.base.errors import HarnessError
from harness.base.qmp import QmpRefused, TranscribedQmp

GREETING = {"QMP": {"version": {"qemu": {"major": 11, "minor": 1, "micro": 3},
                                "package": ""}, "capabilities": []}}


def _peer(listener: socket.socket, answers: int, refusal: str = "") -> None:
    """Greets, answers `answers` commands (the last with `refusal`, as QEMU's error, if
    given), then reads on and answers nothing (the client sends bare JSON objects, no
    line ends)."""
    conn, _ = listener.accept()
    decoder, pending = json.JSONDecoder(), ""
    with conn:
        conn.sendall(json.dumps(GREETING).encode() + b"\r\n")
        while chunk := conn.recv(4096):
            pending += chunk.decode()
            while pending.strip():
                try:
                    command, end = decoder.raw_decode(pending.lstrip())
                except json.JSONDecodeError:
                    break
                pending = pending.lstrip()[end:]
                if answers > 0:
                    answers -= 1
                    answer: dict = {"return": {}}
                    if refusal and answers == 0:
                        answer = {"error": {"class": "GenericError", "desc": refusal}}
                    conn.sendall(json.dumps({**answer, "id": command.get("id")}
                                            ).encode() + b"\r\n")


def test_a_command_without_an_answer_says_so_with_its_deadline(tmp_path):
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "qmp"))
    listener.listen(1)
    threading.Thread(target=_peer, args=(listener, 1), daemon=True).start()
    qmp = TranscribedQmp(str(tmp_path / "qmp"), tmp_path / "qmp.jsonl", "L2")
    qmp.connect(Deadline("L2 QMP", 5))
    try:
        with pytest.raises(HarnessError) as e:
            qmp.cmd_within(0.3, "device_add", driver="ivshmem-plain")
        assert e.value.message == ("QMP device_add: no answer from L2 QEMU within 0.3 s "
                                   "(its main loop is stuck?)")
        logged = [json.loads(line) for line in (tmp_path / "qmp.jsonl").read_text().splitlines()]
        assert logged[-1]["execute"] == "device_add"
        assert logged[-1]["error"] == "no answer within 0.3 s"
    finally:
        qmp.close()
        listener.close()


def test_a_refusal_is_qemus_words_in_a_harness_error_for_the_caller_to_judge(tmp_path):
    """A vfio-user-pci device_add whose server is gone is refused; before, qemu.qmp's own
    exception left the collector (which catches HarnessError) as a traceback in CI."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "qmp"))
    listener.listen(1)
    refusal = "Failed to connect to '/run/vfio-user/0000:00:03.0.sock': Connection refused"
    threading.Thread(target=_peer, args=(listener, 2, refusal), daemon=True).start()
    qmp = TranscribedQmp(str(tmp_path / "qmp"), tmp_path / "qmp.jsonl", "L2")
    qmp.connect(Deadline("L2 QMP", 5))
    try:
        with pytest.raises(QmpRefused) as e:
            qmp.cmd("device_add", driver="vfio-user-pci")
        assert isinstance(e.value, HarnessError) and e.value.command == "device_add"
        assert str(e.value) == f"L2: QMP device_add: L2 QEMU refused it: {refusal}"
        logged = [json.loads(line) for line in (tmp_path / "qmp.jsonl").read_text().splitlines()]
        assert logged[-1]["error"] == refusal
    finally:
        qmp.close()
        listener.close()
