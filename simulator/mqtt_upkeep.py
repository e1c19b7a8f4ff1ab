"""The simulated cars' MQTT upkeep, done once per worker instead of once per car.

Two things every car's MQTT client needs that cost a worker in proportion to its cars, whatever
they are doing:

* **Housekeeping.** aiomqtt runs paho's ``loop_misc`` (keep-alive pings, the keep-alive
  timeout) in a task per client, once a second. The simulator already slowed it to every
  ``interval_s`` (10 s: with the agent's 60 s keep-alive, a ping up to 10 s late is still well
  inside the broker's 1.5 x keep-alive), but each client still kept a timer of its own: at 7,500
  cars a worker, 750 timer wake-ups a second, with their tasks, futures and heap pushes, were 6%
  of its CPU through a 30,000-car campaign (py-spy, issue 19). :class:`Housekeeping` is one
  task per worker that calls ``loop_misc`` on one ``buckets``-th of the clients at each of its
  wake-ups, so each client still gets it every ``interval_s``.
* **Counting sessions.** The worker's progress (twice a second) said how many cars are connected
  and how many sessions were made again by looking at every link: 4% of the same profile.
  :class:`Sessions` counts them as sessions start and end.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import paho.mqtt.client as mqtt


class Housekeeping:
    """paho's ``loop_misc`` for every registered client every ``interval_s``, from one task."""

    def __init__(self, interval_s: float, *, buckets: int = 10) -> None:
        self.interval_s = interval_s
        self._buckets: list[dict[mqtt.Client, asyncio.Future[None]]] = [{} for _ in range(buckets)]
        self._where: dict[mqtt.Client, int] = {}
        self._next = itertools.count()
        self._turn = 0

    def __len__(self) -> int:
        return len(self._where)

    def add(self, client: mqtt.Client) -> asyncio.Future[None]:
        """Keep ``client`` (spread over the buckets in turn); the future is done once ``loop_misc``
        fails for it (its connection is gone), as aiomqtt's own loop would end."""
        bucket = next(self._next) % len(self._buckets)
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buckets[bucket][client] = ended
        self._where[client] = bucket
        return ended

    def discard(self, client: mqtt.Client) -> None:
        bucket = self._where.pop(client, None)
        if bucket is not None:
            self._buckets[bucket].pop(client, None)

    def run_turn(self) -> None:
        """``loop_misc`` for the next bucket's clients."""
        bucket = self._buckets[self._turn]
        self._turn = (self._turn + 1) % len(self._buckets)
        for client, ended in list(bucket.items()):
            if client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                self.discard(client)
                if not ended.done():
                    ended.set_result(None)

    async def run(self) -> None:
        """Forever (until cancelled): one bucket every ``interval_s / buckets`` seconds."""
        pause = self.interval_s / len(self._buckets)
        while True:
            await asyncio.sleep(pause)
            self.run_turn()


@dataclass
class Sessions:
    """How many links are connected now, and the sessions made again (beyond each link's first)."""

    connected: int = 0
    reconnects: int = 0
