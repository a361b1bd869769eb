"""Sync log channels that Cyrus writes and nothing reads (preflight.py finds them), as status
shows them: with their backlog, which grows until someone supervises or removes the channel."""

from __future__ import annotations

from ..cyrus.backlog import Backlog


class StrayChannels:
    def __init__(self):
        self.backlogs: dict[str | None, Backlog] = {}

    def set(self, imapd, channels) -> None:
        """At start and on each reload; a channel seen before keeps its place in the files."""
        old, self.backlogs = self.backlogs, {}
        for channel in channels:
            b = old.get(channel)
            if b is None or b.sync_dir != imapd.sync_dir(channel):
                b = Backlog(imapd.sync_dir(channel))
            self.backlogs[channel] = b

    def as_json(self, mono: float, wall: float) -> list[dict]:
        """``unsupervised_channels`` of the status document; channel None is the default."""
        return [{"channel": channel, "log": str(b.log_path),
                 "backlog": b.read(mono, wall).as_json()}
                for channel, b in self.backlogs.items()]
