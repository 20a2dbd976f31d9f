"""The first-boot wizard. Until the administrator exists its state lives in the
session and every step re-checks that the setup token is still usable; after that
the node's setup progress lives in the database (see ``node_step_view``)."""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.hashers import make_password
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.accounts import services as account_services
from pamportal.accounts.decorators import require_capability
from pamportal.accounts.qr import qr_svg
from pamportal.accounts.roles import has_capability
from pamportal.cluster.follower_selectors import joining_cluster
from pamportal.core.views import refused_redirect
from pamportal.licensing.forms import LicenceUploadForm
from pamportal.licensing.selectors import licence_status
from pamportal.nodes import keys
from pamportal.nodes.forms import MekForm
from pamportal.nodes.progress import StepRefused
from pamportal.nodes.selectors import NODE_STEPS, node_current, node_setup_due
from pamportal.preflight.views import preflight_accepted_count, results_context

from . import administrator, wizard
from . import token as tokens
from .forms import AdministratorForm, NodeForm, SetupCodeForm, TokenForm
from .selectors import preflight_finished, setup_is_complete, setup_preflight_run, setup_token_usable
from .steps import STEP_BY_KEY, step_list

SESSION_KEY = "pam_setup"


def _state(request) -> dict:
    return dict(request.session.get(SESSION_KEY) or {})


def _save(request, state: dict) -> None:
    request.session[SESSION_KEY] = state


def current_step(request) -> str:
    """The step the operator is on, from the wizard state in the session."""
    state = _state(request)
    if not state.get("token_id") or not setup_token_usable(state.get("token_id")):
        return "token"
    if not state.get("username"):
        return "administrator"
    return "totp"


def _render(request, template: str, step: str, context: dict, status: int = 200):
    context = {**context, "steps": step_list(step), "step": STEP_BY_KEY[step]}
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _complete(request, *, error: str = "", status: int = 200):
    return render(request, "setup/complete.html", {"error": error}, status=status)


def _guard(request, step: str):
    """Send the operator to the step that is due when this one is not; None if it is."""
    if setup_is_complete():
        return redirect("setup:start")
    state = _state(request)
    if state.get("token_id") and not setup_token_usable(state["token_id"]):
        request.session.pop(SESSION_KEY, None)
        messages.error(
            request,
            "The setup token you entered is no longer valid (used, replaced or expired). "
            "Enter the token printed most recently at the console.",
        )
        return redirect("setup:token")
    due = current_step(request)
    order = list(STEP_BY_KEY)
    if order.index(step) > order.index(due):
        return redirect(STEP_BY_KEY[due].url_name)
    return None


@never_cache
@require_GET
def start(request):
    if setup_is_complete():
        due = node_setup_due()
        if due is not None and has_capability(request.user, "setup.finalise") and joining_cluster():
            return redirect("setup:join_status")
        if due is not None and has_capability(request.user, "setup.finalise"):
            return redirect(STEP_BY_KEY[due].url_name)
        return _complete(request)
    return redirect(STEP_BY_KEY[current_step(request)].url_name)


@sensitive_post_parameters("token")
@never_cache
@require_http_methods(["GET", "POST"])
def token_step(request):
    complete = setup_is_complete()
    if request.method == "GET" and complete:
        return redirect("setup:start")
    form = TokenForm(request.POST if request.method == "POST" else None)
    error = ""
    if request.method == "POST" and form.is_valid():
        check = tokens.setup_token_check(token=form.cleaned_data["token"])
        if check.ok:
            _save(request, {"token_id": check.token_id})
            messages.success(request, "Setup token accepted.")
            return redirect("setup:administrator")
        error = check.message
        if complete:
            return _complete(request, error=error, status=403)
        form = TokenForm()
    return _render(request, "setup/token.html", "token", {"form": form, "error": error})


@sensitive_post_parameters("password1", "password2")
@never_cache
@require_http_methods(["GET", "POST"])
def administrator_step(request):
    if (response := _guard(request, "administrator")) is not None:
        return response
    state = _state(request)
    form = AdministratorForm(request.POST if request.method == "POST" else None, initial={"username": state.get("username", "")})
    if request.method == "POST" and form.is_valid():
        if state.get("username") != form.cleaned_data["username"]:
            state.pop("totp_key", None)  # the QR code's label names the user
            state["last_t"] = -1
        state["username"] = form.cleaned_data["username"]
        # Only the hash is kept until the administrator is created at the next step.
        state["password_hash"] = make_password(form.cleaned_data["password1"])
        state.setdefault("totp_key", administrator.setup_totp_key())
        state.setdefault("last_t", -1)
        _save(request, state)
        return redirect("setup:totp")
    return _render(request, "setup/administrator.html", "administrator", {"form": form})


@sensitive_post_parameters("otp_token")
@never_cache
@require_http_methods(["GET", "POST"])
def totp_step(request):
    if (response := _guard(request, "totp")) is not None:
        return response
    state = _state(request)
    if not state.get("totp_key"):
        state["totp_key"] = administrator.setup_totp_key()
        _save(request, state)
    username, key = state["username"], state["totp_key"]
    form = SetupCodeForm(request.POST if request.method == "POST" else None)
    error = ""
    if request.method == "POST" and form.is_valid():
        check = administrator.setup_totp_check(
            username=username, key=key, code=form.cleaned_data["otp_token"], after_t=state.get("last_t", -1)
        )
        if check.ok:
            try:
                user, device = administrator.setup_admin_create(
                    token_id=state["token_id"],
                    username=username,
                    password_hash=state["password_hash"],
                    totp_key=key,
                    totp_t=check.t,
                    totp_drift=check.drift,
                )
            except tokens.SetupRefused as refused:
                request.session.pop(SESSION_KEY, None)
                return refused_redirect(request, refused, "setup:start")
            request.session.pop(SESSION_KEY, None)
            account_services.session_start(request=request, user=user, device=device, via="setup")
            messages.success(
                request,
                f"Administrator {username} created with TOTP, and you are logged in. "
                "Next: this node's address and time.",
            )
            return redirect("setup:node")
        error = check.message
        form = SetupCodeForm()
    device = administrator.setup_totp_device(username=username, key=key)
    secret = administrator.base32_secret(key)
    return _render(
        request,
        "setup/totp.html",
        "totp",
        {"form": form, "error": error, "qr": qr_svg(device.config_url), "secret": secret, "username": username},
    )


# --- after the administrator: node, preflight, licence, MEK, finalise -------------------
# These steps keep their progress in the database (``nodes.Node``), so a refresh or a
# later visit resumes where the operator was. Each needs "setup.finalise".

def _node_render(request, template: str, step: str, context: dict, status: int = 200):
    node = context.get("node") or node_current()
    due = node_setup_due(node)
    context = {**context, "node": node, "steps": step_list(step, due), "step": STEP_BY_KEY[step]}
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


def node_step_view(step: str):
    """Guard for a step after the administrator: the capability, the node not yet
    finalised, and the earlier steps done (else to the step that is due)."""

    def decorator(view):
        @wraps(view)
        @require_capability("setup.finalise")
        def wrapper(request, *args, **kwargs):
            node = node_current()
            due = node_setup_due(node)
            if due is None:
                messages.info(request, "Setup of this node is finalised.")
                return redirect("nodes:dashboard")
            if NODE_STEPS.index(step) > NODE_STEPS.index(due):
                return redirect(STEP_BY_KEY[due].url_name)
            return view(request, node, *args, **kwargs)

        return wrapper

    return decorator


@never_cache
@require_http_methods(["GET", "POST"])
@node_step_view("node")
def node_step(request, node):
    # The address the node started with (PAM_NODE_ADDRESS) until the operator sets one.
    initial = {"address": node.address or settings.PAM_NODE_ADDRESS, "ntp_servers": "\n".join(node.ntp_servers or [])}
    form = NodeForm(request.POST if request.method == "POST" else None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            wizard.setup_node_set(
                user=request.user, address=form.cleaned_data["address"], ntp_servers=form.cleaned_data["ntp_servers"]
            )
        except StepRefused as refused:
            return refused_redirect(request, refused, "setup:start")
        return redirect("setup:preflight")
    return _node_render(request, "setup/node.html", "node", {"form": form, "node": node})


def _preflight_context(request, node) -> dict:
    run = setup_preflight_run(node)
    if run is None:
        return {"run": None}
    context = results_context(request, run, return_to=reverse("setup:preflight"))
    finished = preflight_finished(run)
    return {**context, "finished": finished, "held_back": finished and bool(context["blocking"])}


@never_cache
@require_GET
@node_step_view("preflight")
def preflight_step(request, node):
    return _node_render(request, "setup/preflight.html", "preflight", {"node": node, **_preflight_context(request, node)})


@never_cache
@require_POST
@node_step_view("preflight")
def preflight_start(request, node):
    try:
        run = wizard.setup_preflight_start(user=request.user)
    except StepRefused as refused:
        return refused_redirect(request, refused, "setup:preflight")
    messages.success(request, f"Preflight started (run #{run.pk}).")
    return redirect("setup:preflight")


@never_cache
@require_POST
@node_step_view("preflight")
def preflight_next(request, node):
    try:
        wizard.setup_preflight_pass(user=request.user)
    except StepRefused as refused:
        return refused_redirect(request, refused, "setup:preflight")
    return redirect("setup:licence")


@never_cache
@require_http_methods(["GET", "POST"])
@node_step_view("licence")
def licence_step(request, node):
    error = None
    if request.method == "POST":
        licence, error = LicenceUploadForm(request.POST, request.FILES).install(user=request.user)
        if licence is not None:
            messages.success(request, f"Licence {licence.licence_id} installed.")
            return redirect("setup:licence")
    status = licence_status()
    context = {
        "node": node,
        "licence": status.licence if status.ok else None,
        "licence_status": status,
        "licence_error": error,
        "licence_action": reverse("setup:licence"),
        "licence_submit": "Replace the licence" if status.ok else "Install licence",
    }
    return _node_render(request, "setup/licence.html", "licence", context, status=400 if error else 200)


@never_cache
@require_POST
@node_step_view("licence")
def licence_next(request, node):
    try:
        wizard.setup_licence_done(user=request.user)
    except StepRefused as refused:
        return refused_redirect(request, refused, "setup:licence")
    return redirect("setup:mek")


@sensitive_variables()
@never_cache
@require_GET
@node_step_view("mek")
def mek_step(request, node):
    # The key is in this response only the first time the page is shown after it is
    # generated; the service records that it was shown before the page is rendered.
    shown_now = keys.mek_reveal(user=request.user)
    node = node_current()
    groups = shown_now.split("-") if shown_now else []
    return _node_render(
        request, "setup/mek.html", "mek", {"node": node, "groups": groups, "form": MekForm(), "error": ""}
    )


@never_cache
@require_POST
@node_step_view("mek")
def mek_generate(request, node):
    try:
        keys.mek_generate(user=request.user)
    except StepRefused as refused:
        return refused_redirect(request, refused, "setup:mek")
    return redirect("setup:mek")


@sensitive_variables()
@never_cache
@require_POST
@node_step_view("mek")
def mek_download(request, node):
    result = keys.mek_download(user=request.user)
    if not result.ok:
        messages.error(request, result.message)
        return redirect("setup:mek")
    response = HttpResponse(result.text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{result.filename}"'
    response["Cache-Control"] = "no-store"
    return response


@sensitive_post_parameters("mek")
@sensitive_variables()
@never_cache
@require_POST
@node_step_view("mek")
def mek_confirm(request, node):
    typed = request.POST.get("mek", "")[: MekForm.base_fields["mek"].max_length]
    try:
        result = keys.mek_confirm(user=request.user, typed=typed)
    except StepRefused as refused:
        return refused_redirect(request, refused, "setup:mek")
    if result.ok:
        messages.success(request, result.message)
        return redirect("setup:finalise")
    error = result.message
    # A fresh form: what was typed is never sent back.
    return _node_render(
        request, "setup/mek.html", "mek", {"node": node_current(), "groups": [], "form": MekForm(), "error": error},
        status=400,
    )


@never_cache
@require_POST
@node_step_view("mek")
def mek_discard(request, node):
    result = keys.mek_discard(user=request.user)
    (messages.success if result.ok else messages.error)(request, result.message)
    return redirect("setup:mek")


@never_cache
@require_http_methods(["GET", "POST"])
@node_step_view("finalise")
def finalise_step(request, node):
    if request.method == "POST":
        try:
            wizard.setup_finalise(user=request.user)
        except StepRefused as refused:
            return refused_redirect(request, refused, "setup:finalise")
        messages.success(
            request,
            "Setup is finalised: this node is a standalone server with its cluster CA and its own certificate. "
            "The console switches to the new certificate within a few seconds.",
        )
        return redirect("nodes:dashboard")
    status = licence_status()
    run = setup_preflight_run(node)
    accepted = preflight_accepted_count(run) if run is not None else 0
    context = {"node": node, "licence": status.licence if status.ok else None, "licence_status": status,
               "preflight_accepted": accepted}
    return _node_render(request, "setup/finalise.html", "finalise", context)
