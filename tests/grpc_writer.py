"""Insert batches through vecstore.Client until a call fails, appending each acknowledged
batch's first id to a file as soon as its reply arrives.

    python tests/grpc_writer.py ADDRESS ACK_FILE

Batch b holds ids b*BATCH .. b*BATCH+BATCH-1 with the vectors ``batch_vectors(b)``.
"""

from __future__ import annotations

import sys

import numpy as np

import vecstore

BATCH = 50
DIM = 16
COLLECTION = "acked"


def batch_vectors(b: int) -> np.ndarray:
    """The (BATCH, DIM) float32 vectors of batch ``b``."""
    return np.random.default_rng(b).standard_normal((BATCH, DIM)).astype(np.float32)


def main(address: str, ack_file: str) -> int:
    with vecstore.Client(address, retries=0, timeout=30) as client, \
            open(ack_file, "a") as acks:
        collection = client.get_collection(COLLECTION)
        for b in range(1_000_000):
            try:
                collection.add(batch_vectors(b), ids=np.arange(b * BATCH, (b + 1) * BATCH))
            except vecstore.VecstoreError as exc:
                print(f"stopped at batch {b}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 0
            acks.write(f"{b}\n")
            acks.flush()
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
