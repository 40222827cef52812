"""Background online learning: fine-tune the network on recent completions, swap it in, persist.

Runs in its own thread so predictions never wait for training: it copies the live network, takes a
few Adam steps on the replay buffer, and hands the copy to Predictor.swap_net (which re-keys the
history). Checkpoints (network + history) go to the CheckpointStore on a timer and at stop.
"""
from __future__ import annotations

import copy
import random
import threading
import time

import torch

from sagesched.predictor.checkpoint import CheckpointStore
from sagesched.predictor.core import Predictor
from sagesched.predictor.model import collate, smoothed_targets


class OnlineLearner:
    def __init__(self, predictor: Predictor, store: CheckpointStore | None, on_update=None) -> None:
        self.predictor = predictor
        self.store = store
        self.on_update = on_update
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="predictor-online", daemon=True)
        self.updates = 0
        self._last_save = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.predictor.lock:
            self.predictor._report_event.notify_all()
        self._thread.join(timeout=30)
        self.save()

    def update_once(self) -> None:
        """One fine-tuning round on the replay buffer (also callable directly, e.g. from tests)."""
        p = self.predictor
        s = p.settings
        if p.net is None:
            return
        with p.lock:
            replay = list(p.replay)
        if len(replay) < 64:
            return
        net = copy.deepcopy(p.net)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=s.online_lr)
        rng = random.Random(self.updates)
        for _ in range(s.online_steps):
            batch = rng.sample(replay, min(128, len(replay)))
            target = smoothed_targets(torch.tensor([b for _, b in batch]), net.config.num_bins, 0.2)
            logits = net(*collate([f for f, _ in batch])) / net.temperature
            loss = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        p.swap_net(net)
        self.updates += 1
        if self.on_update:
            self.on_update()

    def save(self) -> None:
        if self.store is None or self.predictor.net is None:
            return
        self.store.publish(self.predictor.net, self.predictor.feature_config, self.predictor.history_state(),
                           {"online_updates": self.updates, "version": self.predictor.version})
        self._last_save = time.monotonic()

    def _run(self) -> None:
        torch.set_num_threads(1)
        every = self.predictor.settings.online_every
        next_at = self.predictor.learnable_reports + every
        while not self._stop.is_set():
            if every > 0 and self.predictor.wait_for_reports(next_at, timeout=1.0):
                if self._stop.is_set():
                    break
                self.update_once()
                next_at = self.predictor.learnable_reports + every
            elif every <= 0:
                self._stop.wait(1.0)
            if time.monotonic() - self._last_save > self.predictor.settings.checkpoint_every_s:
                self.save()
