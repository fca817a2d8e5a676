"""SSE framing of the relay, without Redis: whole frames, bounded writes, order kept."""

import orjson

from gateway.relay import WRITE_BYTES, pack_writes, sse_frame


def _frames(count: int, size: int) -> list[bytes]:
    return [sse_frame(seq, orjson.dumps({"type": "progress", "data": "x" * size})) for seq in range(1, count + 1)]


def test_frame_is_id_then_one_data_line() -> None:
    assert sse_frame(7, b'{"type":"done"}') == b'id: 7\ndata: {"type":"done"}\n\n'


def test_small_frames_share_writes_within_the_bound() -> None:
    frames = _frames(500, 40)
    writes = pack_writes(frames)
    assert 1 < len(writes) < len(frames)
    assert all(len(w) <= WRITE_BYTES for w in writes)
    assert b"".join(writes) == b"".join(frames)
    for write in writes:
        assert write.startswith(b"id: ") and write.endswith(b"\n\n")


def test_a_frame_bigger_than_the_bound_is_a_write_of_its_own() -> None:
    frames = [*_frames(2, 10), *_frames(1, WRITE_BYTES * 3), *_frames(2, 10)]
    writes = pack_writes(frames)
    assert writes == [frames[0] + frames[1], frames[2], frames[3] + frames[4]]


def test_nothing_to_write() -> None:
    assert pack_writes([]) == []
