"""What to export: the validated parameters of one export, and the period they cover."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from airflow_provider_loyalty.export.part_formats import check_output_format
from airflow_provider_loyalty.utils import validation

#: The fields that say which transactions an export holds (what ``replace`` compares).
PERIOD_FIELDS = ("loyalty_program_id", "points_currency_eid", "points_currency_iid", "date_from", "date_to")


@dataclass(frozen=True)
class ExportSpec:
    """What to export: validated, in the API's formats, JSON-safe.

    :param loyalty_program_id: the loyalty program.
    :param points_currency_eid: external currency id (or ``None``).
    :param points_currency_iid: internal currency id (or ``None``).
    :param date_from: period start, RFC3339 UTC, inclusive.
    :param date_to: period end, RFC3339 UTC, inclusive.
    :param from_id: the cursor the export starts from (``None``: the beginning of the period).
    :param output_format: how parts are stored: ``csv``, ``csv.gz`` or ``parquet``.
    """

    loyalty_program_id: int
    points_currency_eid: str | None
    points_currency_iid: int | None
    date_from: str
    date_to: str
    from_id: str | None = None
    output_format: str = "csv"

    @classmethod
    def build(
        cls,
        *,
        loyalty_program_id: Any,
        points_currency_eid: Any,
        points_currency_iid: Any,
        date_from: Any,
        date_to: Any,
        from_id: Any = None,
        output_format: Any = "csv",
    ) -> ExportSpec:
        """Validate user input (rendered templates) into a spec; errors name the parameter."""
        currency = validation.check_currency(points_currency_eid, points_currency_iid)
        start, end = validation.check_period(date_from, date_to)
        return cls(
            loyalty_program_id=validation.check_program_id(loyalty_program_id),
            points_currency_eid=currency.get("points_currency_eid"),
            points_currency_iid=currency.get("points_currency_iid"),
            date_from=start,
            date_to=end,
            from_id=validation.check_cursor(from_id),
            output_format=check_output_format(output_format),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, as stored in the checkpoint."""
        return asdict(self)

    @property
    def period(self) -> dict[str, Any]:
        """Program, currency and dates: which transactions the export holds."""
        return {name: getattr(self, name) for name in PERIOD_FIELDS}

    def describe_period(self) -> str:
        """``program 123, bonus_points, 2023-09-01T00:00:00Z .. 2023-09-30T23:59:59Z``."""
        return describe_period(self.period)


def describe_period(period: dict[str, Any]) -> str:
    """A period (from a spec, a manifest or a lease) for a message."""
    currency = period.get("points_currency_eid") or f"currency iid {period.get('points_currency_iid')}"
    return (
        f"program {period.get('loyalty_program_id')}, {currency}, {period.get('date_from')} .. {period.get('date_to')}"
    )


def period_of(document: dict[str, Any]) -> dict[str, Any]:
    """The period fields of a stored document (a manifest, a lease)."""
    return {name: document.get(name) for name in PERIOD_FIELDS}
