"""`phg view forget PATIENT`: erase a patient's readings from the reading store the view in the EHR
reads (phg.viewstore), e.g. when the patient leaves the programme or asks for erasure."""

from __future__ import annotations

import click

from phg.cli.common import EXIT_CONFIG, EXIT_INPUT, Context, fail


@click.group()
def view() -> None:
    """The reading store the view in the EHR reads."""


@view.command("forget")
@click.argument("patient")
@click.pass_obj
def forget(obj: Context, patient: str) -> None:
    """Delete every reading of PATIENT (system|value, as FHIR token search writes it; a '|' inside
    either written '\\|') from the view's store. The queue keeps what it has still to deliver."""
    from phg.service.readings import parse_patient
    from phg.viewstore import open_view

    config = obj.config()
    try:
        identifier = parse_patient(patient)
    except ValueError as exc:
        fail(str(exc), EXIT_INPUT)
    store = open_view(config.view)
    if store is None:
        fail("no reading store for the view is configured (set [view] path or configure [smart])", EXIT_CONFIG)
    with store:
        click.echo(f"forgot {store.forget(identifier)} reading(s) of that patient in {store.path}")
