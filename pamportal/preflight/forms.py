from django import forms


class WarningAcceptForm(forms.Form):
    # Every length rule lives in the service, which audits a refusal; the form parses.
    reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    next = forms.CharField(required=False)
