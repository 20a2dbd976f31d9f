"""The licence upload form (also used by the setup wizard's licence step)."""

from __future__ import annotations

from django import forms

UPLOAD_FIELD = "licence_file"


class LicenceUploadForm(forms.Form):
    # Empty files are allowed here so that the licence parser refuses them with its
    # own message and audit event, like every other bad file.
    licence_file = forms.FileField(
        label="Licence file",
        allow_empty_file=True,
        max_length=255,
        error_messages={"required": "Choose the licence file to upload."},
    )
