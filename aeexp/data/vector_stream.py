"""Vectors streamed from their shards, for sets larger than memory (``dataset.stream``).

An epoch's order is a function of one seed (the trainer draws it from its shuffle generator,
so a resumed run draws the same one): the shards in a seeded order, each read in pieces of
at most ``shuffle_buffer`` rows that are shuffled on arrival and pass through a shuffle buffer
of ``shuffle_buffer`` samples, which mixes samples across shards. A piece of c rows takes the
places of c distinct random samples of the buffer, which leave it for the batch stream; at the
end the buffer empties in a random order. Which sample comes out where depends on the seed and
the row counts alone, never on the values read, so resuming at batch ``start`` replays the
draws on row numbers without reading anything, then reads the samples that the buffer holds
at that point (:meth:`VectorSource.gather`) and goes on as the uninterrupted epoch did.

A background thread reads, shuffles and cuts batches ahead of the training step
(``prefetch`` batches); each batch moves to the device as stored (float16 stays float16) and
:func:`aeexp.data.images.to_float` makes it float32 there. Without a seed (validation, test,
evaluation) the rows come in file order.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch

if TYPE_CHECKING:  # images.py imports this module, and vector_files imports images.py's users
    from aeexp.data.vector_files import VectorSource

PIECE_ROWS = 16384  # rows read at a time (fewer when the shuffle buffer is smaller)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class StreamedVectors:
    """The rows ``indices`` (sorted global row numbers) of a :class:`VectorSource`, read batch by
    batch; ``len`` is their count, ``shape`` one vector's (D,)."""

    def __init__(self, source: VectorSource, indices: np.ndarray, shuffle_buffer: int = 65536, prefetch: int = 4,
                 device: torch.device | str = "cpu"):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.shuffle_buffer, self.prefetch = int(shuffle_buffer), int(prefetch)
        self.device = torch.device(device)
        self.per_shard = source.shard_rows(self.indices)

    @property
    def shape(self) -> tuple[int]:
        return (self.source.width,)

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> "StreamedVectors":
        return StreamedVectors(self.source, self.indices, self.shuffle_buffer, self.prefetch, device)

    def first(self, n: int) -> "StreamedVectors":
        """The first ``n`` of these rows (file order), streamed the same way."""
        return StreamedVectors(self.source, self.indices[:n], self.shuffle_buffer, self.prefetch, self.device)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` vectors, as stored, on the device (for fixed picture batches)."""
        return self.source.gather(self.indices[:n]).to(self.device)

    def materialise(self, limit: Optional[int] = None) -> torch.Tensor:
        """These rows (the first ``limit``), in file order, as one CPU tensor."""
        return self.source.gather(self.indices[:limit])

    # ------------------------------------------------------------------ order
    def epoch_rows(self, seed: int, skip: int = 0) -> Iterator[tuple[np.ndarray, Optional[torch.Tensor]]]:
        """The epoch of ``seed`` from sample ``skip`` on, as (global row numbers, vectors) chunks;
        before ``skip`` only row numbers are drawn, nothing is read."""
        rng = np.random.default_rng(seed)
        capacity = max(1, min(self.shuffle_buffer, len(self)))
        piece_rows = min(PIECE_ROWS, capacity)
        buffer_rows = np.empty(capacity, dtype=np.int64)  # the first ``filled`` places are taken
        buffer: Optional[torch.Tensor] = None  # their vectors, once reading has begun (``live``)
        filled = emitted = 0
        live = False

        def go_live() -> torch.Tensor:  # the vectors of the samples the buffer holds at this point
            vectors = torch.empty(capacity, self.source.width, dtype=self.source.dtype)
            vectors[:filled] = self.source.gather(buffer_rows[:filled])
            return vectors

        if skip == 0:
            buffer, live = go_live(), True
        for shard in rng.permutation(len(self.per_shard)):
            local = self.per_shard[shard]
            for begin in range(0, len(local), piece_rows):
                rows = local[begin : begin + piece_rows]
                incoming = rows + self.source.offsets[shard]
                fill = min(capacity - filled, len(rows))  # places still free take the first rows
                rest = len(rows) - fill  # the others each take the place of a random sample, which leaves
                slots = rng.choice(capacity, size=rest, replace=False) if rest else None
                if not live and emitted + rest > skip:
                    buffer, live = go_live(), True
                data = self.source.read(int(shard), rows) if live else None
                buffer_rows[filled : filled + fill] = incoming[:fill]
                if live:
                    buffer[filled : filled + fill] = data[:fill]
                filled += fill
                if slots is None:
                    continue
                out_rows = buffer_rows[slots]
                buffer_rows[slots] = incoming[fill:]
                if live:
                    index = torch.from_numpy(slots)
                    out = buffer[index]
                    buffer[index] = data[fill:]
                    drop = max(0, skip - emitted)
                    yield out_rows[drop:], out[drop:]
                emitted += rest
        order = rng.permutation(filled)  # the end: the buffer empties in a random order
        if not live:
            buffer = go_live()
        drop = max(0, skip - emitted)
        yield buffer_rows[order][drop:], buffer[torch.from_numpy(order[drop:])]

    def file_order_rows(self, skip: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """These rows in file order from sample ``skip`` on, a piece at a time."""
        position = 0
        for shard, local in enumerate(self.per_shard):
            for begin in range(0, len(local), PIECE_ROWS):
                rows = local[begin : begin + PIECE_ROWS]
                end = position + len(rows)
                if end > skip:
                    rows = rows[max(0, skip - position) :]
                    yield rows + self.source.offsets[shard], self.source.read(shard, rows)
                position = end

    # ---------------------------------------------------------------- batches
    def batches(self, batch_size: int, seed: Optional[int] = None, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches (as stored, on the device) of the epoch of ``seed`` (None: file order) from
        batch number ``start`` on; read and cut by a background thread."""
        skip = start * batch_size
        chunks = self.epoch_rows(seed, skip) if seed is not None else self.file_order_rows(skip)
        pin = self.device.type == "cuda"
        ready: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def put(item, pin_it: bool) -> bool:
            if pin_it:
                item = item.pin_memory()
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            # One thread for this thread's torch work (OpenMP's setting is per calling thread): a
            # second team of threads would contend with the training step's for the same cores.
            torch.set_num_threads(1)
            try:
                carry: Optional[torch.Tensor] = None  # fewer than batch_size rows, waiting for more
                for _, data in chunks:
                    at = 0
                    if carry is not None:
                        need = batch_size - len(carry)
                        if len(data) < need:
                            carry = torch.cat([carry, data])
                            continue
                        if not put(torch.cat([carry, data[:need]]), pin):
                            return
                        at, carry = need, None
                    while len(data) - at >= batch_size:  # views of the chunk: no copy
                        if not put(data[at : at + batch_size], pin):
                            return
                        at += batch_size
                    if at < len(data):
                        carry = data[at:]
                if carry is not None and not put(carry, pin):
                    return
                put(None, False)
            except BaseException as err:  # noqa: BLE001  (handed to the consumer, raised there)
                put(_Failure(err), False)

        thread = threading.Thread(target=produce, name="aeexp-vector-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item.to(self.device, non_blocking=pin)
        finally:
            stop.set()
            thread.join(timeout=10)
