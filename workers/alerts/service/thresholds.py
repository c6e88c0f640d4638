"""What usage, spend and anomaly rules raise, given the values the read models hold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from urllib.parse import quote, urlencode

from schemas.alerts import About, Anomaly, SpendThreshold, UsageThreshold
from schemas.pricing import FlatPrice, PlanSpec
from workers.alerts.service.domain import Alert, RuleDef, new_alert
from workers.alerts.service.periods import ANOMALY_DAYS, HOUR
from workers.alerts.service.text import money, text_of, utc_text
from workers.alerts.views import spec_of

_PERCENT = Decimal(100)


def crossed(
    reached: Decimal,
    thresholds: Sequence[Decimal],
    every: Decimal | None,
    at_least: Callable[[Decimal], bool] | None = None,
) -> list[Decimal]:
    """The thresholds ``reached`` is at or above: each fixed one, and of the recurring ones
    (every ``every`` above the highest fixed threshold) only the highest, so a jump past
    many multiples raises one alert, not thousands.

    ``at_least(t)`` decides exactly when ``reached`` is itself a rounded quotient."""
    exact = at_least or (lambda t: reached >= t)
    out = [t for t in thresholds if exact(t)]
    if every is not None:
        base = thresholds[-1] if thresholds else Decimal(0)
        steps = int((reached - base) // every) if reached > base else 0
        if exact(base + (steps + 1) * every):
            steps += 1
        elif steps >= 1 and not exact(base + steps * every):
            steps -= 1
        if steps >= 1:
            out.append(base + steps * every)
    return out


def included_quantity(plan: PlanSpec, meter: str) -> Decimal | None:
    """The included quantity of the plan's price on ``meter`` (None: no such price)."""
    for price in plan.prices:
        if not isinstance(price, FlatPrice) and price.meter == meter:
            return price.included_quantity
    return None


def usage_href(meter: str, subject: str, start: datetime, end: datetime, window: str) -> str:
    query = urlencode(
        {
            "subject": subject,
            "from": start.isoformat().replace("+00:00", "Z"),
            "to": end.isoformat().replace("+00:00", "Z"),
            "window_size": window,
        }
    )
    return f"/v1/meters/{quote(meter)}/usage?{query}"


def usage_alerts(
    rule: RuleDef,
    subject: str,
    period: tuple[datetime, datetime],
    total: Decimal | None,
    included: Decimal | None,
    now: datetime,
) -> list[Alert]:
    """The alerts a usage-threshold rule raises for ``subject`` at ``total`` (the meter's
    value over ``period``). Percent rules need the plan's ``included`` quantity (> 0)."""
    spec = spec_of(rule).rule
    assert isinstance(spec, UsageThreshold)
    if total is None:
        return []
    if spec.unit == "percent_of_included":
        if not included:
            return []
        reached = total * _PERCENT / included  # rounded: compared exactly, shown rounded down
        hits = crossed(
            reached,
            spec.thresholds,
            spec.recurring_every,
            lambda t: total * _PERCENT >= t * included,
        )
        shown = reached.quantize(Decimal("0.01"), ROUND_DOWN)
    else:
        hits = crossed(total, spec.thresholds, spec.recurring_every)
        shown = total
    about = About(
        type="meter_usage",
        id=spec.meter,
        href=usage_href(spec.meter, subject, period[0], period[1], "none"),
    )
    out = []
    for t in hits:
        if spec.unit == "percent_of_included":
            what = f"{text_of(shown)}% of the {text_of(included or Decimal(0))} included"
            message = (
                f"{spec.meter} usage of {subject} reached {text_of(t)}% of the plan's included "
                f"quantity: {text_of(total)} ({what})"
            )
        else:
            message = f"{spec.meter} usage of {subject} reached {text_of(t)}: {text_of(total)}"
        out.append(
            new_alert(
                rule,
                subject=subject,
                dedupe=f"usage:{subject}:{period[0].isoformat()}:{text_of(t)}",
                about=about,
                message=message + f" in the period from {utc_text(period[0])}",
                now=now,
                period=period,
                threshold=t,
                value=shown,
                unit=spec.unit,
            )
        )
    return out


def spend_alerts(
    rule: RuleDef,
    subject: str,
    period: tuple[datetime, datetime],
    amount: int,
    now: datetime,
) -> list[Alert]:
    """The alerts a spend rule raises at ``amount`` (the invoice-to-be, minor units)."""
    spec = spec_of(rule).rule
    assert isinstance(spec, SpendThreshold)
    hits = crossed(
        Decimal(amount),
        [Decimal(t) for t in spec.thresholds],
        Decimal(spec.recurring_every) if spec.recurring_every is not None else None,
    )
    about = About(
        type="customer",
        id=subject,
        href=f"/v1/customers/{quote(subject)}",
    )
    return [
        new_alert(
            rule,
            subject=subject,
            dedupe=f"spend:{subject}:{period[0].isoformat()}:{text_of(t)}",
            about=about,
            message=(
                f"the invoice-to-be of {subject} reached {money(int(t), spec.currency)}: "
                f"{money(amount, spec.currency)} for the period from "
                f"{utc_text(period[0])}"
            ),
            now=now,
            period=period,
            threshold=t,
            value=Decimal(amount),
            unit=spec.currency,
        )
        for t in hits
    ]


def anomaly_alert(
    rule: RuleDef,
    subject: str,
    hour: datetime,
    value: Decimal | None,
    history: Sequence[Decimal | None],
    now: datetime,
) -> Alert | None:
    """An alert if ``value`` (the hour's usage) is above factor x the mean of ``history``
    (the same hour on the days before; None counts as 0). No history, no alert."""
    spec = spec_of(rule).rule
    assert isinstance(spec, Anomaly)
    past = [h or Decimal(0) for h in history]
    total = sum(past, Decimal(0))
    if value is None or total <= 0 or value < spec.min_value:
        return None
    if value * len(past) <= spec.factor * total:  # value > factor * mean, exactly
        return None
    mean = total / len(past)
    threshold = (spec.factor * mean).quantize(Decimal("0.000001"))
    start = hour - timedelta(days=ANOMALY_DAYS)
    return new_alert(
        rule,
        subject=subject,
        dedupe=f"anomaly:{subject}:{hour.isoformat()}",
        about=About(
            type="meter_usage",
            id=spec.meter,
            href=usage_href(spec.meter, subject, start, hour + HOUR, "hour"),
        ),
        message=(
            f"{spec.meter} usage of {subject} in the hour from {utc_text(hour)} is "
            f"{text_of(value)}, above {text_of(spec.factor)} x the mean of the same hour on the "
            f"{len(past)} days before ({text_of(mean.quantize(Decimal('0.000001')))})"
        ),
        now=now,
        period=(hour, hour + HOUR),
        threshold=threshold,
        value=value,
        unit="quantity",
    )
