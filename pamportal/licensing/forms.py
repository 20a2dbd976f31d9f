"""The licence upload form (also used by the setup wizard's licence step)."""

from __future__ import annotations

from django import forms

from pamportal.crypto.licence import MAX_BYTES

from .models import Licence
from .services import LicenceRefused, licence_install

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

    def install(self, *, user) -> tuple[Licence | None, str | None]:
        """Hand the posted file to ``licence_install``. Returns (licence, None) when it
        is installed, or (None, the message for the operator) when refused; every
        refused file has been audited. The caller checks who may do this."""
        if not self.is_valid():
            return None, " ".join(self.errors.get(UPLOAD_FIELD) or ["Choose the licence file to upload."])
        uploaded = self.cleaned_data[UPLOAD_FIELD]
        # Never read more than one byte past the limit: a larger file (its size is known
        # before reading) is refused on its length alone.
        data = uploaded.read(MAX_BYTES + 1)
        try:
            licence = licence_install(data=data, user=user, filename=uploaded.name or "")
        except LicenceRefused as refused:
            return None, refused.message
        return licence, None
