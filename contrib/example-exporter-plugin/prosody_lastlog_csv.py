"""An example prosody-lastlog exporter plugin: appends every point to a CSV file."""

from collections.abc import Sequence
from pathlib import Path

from exporters import ExportError, Point, PushExporter


def create(*, path: str, interval: float = 60.0) -> PushExporter:
    """Settings come from the [exporters.csv] table, as keywords."""
    target = Path(path)

    def send(points: Sequence[Point]) -> None:
        lines = "".join(f"{p.timestamp},{p.host},{p.name},{p.window or ''},{p.value}\n" for p in points)
        try:
            with target.open("a", encoding="utf-8") as file:
                file.write(lines)
        except OSError as exc:
            raise ExportError(f"cannot write {target}: {exc.strerror}") from exc

    return PushExporter("csv", send, interval=interval)
