"""Run the older official SDK (PyPI `runware`) against a Runware URL: `python legacy_runware_client.py URL KEY JOBS`.

Run by the Python of its own virtual environment (see legacy_runware.py), so it
imports nothing of the project. JOBS is a JSON list of imageCaption requests
(IImageCaption's fields); they run one after the other on one client. Prints a
JSON object: `results`, one per job (`{"taskUUID", "text", "cost"}` or
`{"error": type, "message"}`), and `reconnects`, the SDK's log lines about
reconnecting.
"""

import asyncio
import json
import logging
import sys

from runware import IImageCaption
from runware import Runware


class Reconnects(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "Reconnecting after error" in record.getMessage():
            self.lines.append(record.getMessage())


async def main(url: str, key: str, jobs: list[dict]) -> dict:
    reconnects = Reconnects()
    client = Runware(api_key=key, url=url, log_level=logging.INFO)
    client.logger.addHandler(reconnects)
    results = []
    try:
        await client.connect()
        for job in jobs:
            try:
                answer = await client.imageCaption(requestImageToText=IImageCaption(**job))
                results.append({"taskUUID": answer.taskUUID, "text": answer.text, "cost": answer.cost})
            except Exception as exc:  # the result of the job, for the test to judge
                results.append({"error": type(exc).__name__, "message": str(exc)})
    finally:
        await client.disconnect()
    return {"results": results, "reconnects": reconnects.lines}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))))
