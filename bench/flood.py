"""Invalid-datagram flood: random bytes of random size, and 176-byte requests with bad signatures.

Packets are built beforehand; the send loop only paces and calls ``send`` on a connected socket.
"""

from __future__ import annotations

import errno
import random
import resource
import socket
import sys
import time

from xvmd.protocol.wire import HASH_OFFSET, HashType, Op, encode_request

POOL = 4096  # a power of two


def packets(seed: int) -> list[bytes]:
    """Half random garbage (1..1400 bytes), half well-formed requests whose hash is random."""
    rnd = random.Random(seed)
    out = []
    for i in range(POOL):
        if i % 2:
            out.append(rnd.randbytes(rnd.randint(1, 1400)))
            continue
        raw = encode_request(
            rnd.choice([Op.STATUS, Op.OFF, Op.REBOOT, Op.HOSTLIST]),
            f"vm-{rnd.randint(1, 43):02d}",
            address="127.0.0.1",
            port=rnd.randint(1024, 65535),
            seqno=rnd.getrandbits(32),
            hashtype=HashType.SHA256,
            random=rnd.randbytes(6),
        )
        out.append(raw[:HASH_OFFSET] + rnd.randbytes(32) + b"\0" * 32)
    return out


def flood(port: int, rate: float, seconds: float, seed: int) -> dict[str, object]:
    """Send ``rate`` datagrams/s to 127.0.0.1:``port`` for ``seconds`` s (best effort)."""
    pool = packets(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    send = sock.send
    mask = POOL - 1
    sent = failed = 0
    batch_cap = max(int(rate / 200), 1)  # at most 5 ms of packets in one burst
    print("armed", flush=True)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = min(int((now - t0) * rate) - sent - failed, batch_cap)
        if due <= 0:
            time.sleep(0.0002)
            continue
        for j in range(sent + failed, sent + failed + due):
            try:
                send(pool[j & mask])
                sent += 1
            except OSError as exc:  # ECONNREFUSED after an ICMP error, ENOBUFS
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                    raise
                failed += 1
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    sock.close()
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    print(f"flood: {sent} sent in {wall:.2f}s", file=sys.stderr)
    return {
        "sent": sent,
        "failed": failed,
        "wall_s": wall,
        "rate": sent / wall,
        "target_rate": rate,
        "sender_cpu_s": cpu,
    }
