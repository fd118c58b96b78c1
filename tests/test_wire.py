"""zpeer.wire.multipart over a real DEALER -> ROUTER pair: which frames are copied, which are
zero-copy."""
import pytest
import zmq

from zpeer.wire import multipart


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.linger = 0
    dealer.identity = b"w1/secret"
    router.bind(f"ipc://{tmp_path}/wire.sock")
    dealer.connect(f"ipc://{tmp_path}/wire.sock")
    yield router, dealer
    router.close()
    dealer.close()
    ctx.term()


def _recv(sock, **kw):
    assert sock.poll(5000)
    return multipart.recv(sock, zmq.NOBLOCK, **kw)


def test_small_frames_arrive_as_bytes_data_zero_copy_and_the_meta_frame_with_its_properties(pair):
    router, dealer = pair
    big = bytes(range(256)) * 1024  # 256 KiB: sent zero-copy
    multipart.send(dealer, [b"ZP\x01", b"header", big])
    frames = _recv(router, data_from=3, meta_at=1, max_frames=4)
    assert frames[0] == b"w1/secret" and isinstance(frames[0], bytes)
    assert isinstance(frames[1], zmq.Frame) and frames[1].bytes == b"ZP\x01"
    assert frames[1].get(zmq.SRCFD) >= 0  # the properties a meta frame is kept for
    assert frames[2] == b"header" and isinstance(frames[2], bytes)
    assert isinstance(frames[3], zmq.Frame) and frames[3].bytes == big


def test_a_reply_with_many_data_frames_is_read_whole(pair):
    router, dealer = pair
    multipart.send(dealer, [b"hello"])  # a ROUTER drops what it cannot route: let it learn the peer
    assert _recv(router, data_from=3)[1] == b"hello"
    multipart.send(router, [b"w1/secret", b"ZP\x01", b"map"] + [b"chunk%d" % i for i in range(20)])
    frames = _recv(dealer, data_from=2)
    assert frames[:2] == [b"ZP\x01", b"map"]
    assert [f.bytes for f in frames[2:]] == [b"chunk%d" % i for i in range(20)]


def test_an_overlong_message_is_cut_for_the_decoder_and_the_next_one_reads_clean(pair):
    router, dealer = pair
    multipart.send(dealer, [b"x"] * 50)
    multipart.send(dealer, [b"ZP\x01", b"next"])
    assert len(_recv(router, data_from=3, meta_at=1, max_frames=4)) == 5  # 4 + 1: rejected later
    assert _recv(router, data_from=3, meta_at=1, max_frames=4)[2] == b"next"
