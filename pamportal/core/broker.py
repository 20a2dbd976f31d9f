"""kombu's filesystem transport with atomic message files (the embedded default broker).

kombu 5.7's filesystem transport creates a message file and then writes into it; a
worker listing the folder in between moves the empty file away, fails to decode it and
crashes (celery/kombu#1551). Here a message is written under a name the reader ignores
and renamed into place, which is atomic within one folder: a reader sees the whole
message or nothing.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

_PARTIAL = ".part"  # the reader only takes names ending in "<queue>.msg"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + _PARTIAL
        try:
            with open(partial, "wb", buffering=0) as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
