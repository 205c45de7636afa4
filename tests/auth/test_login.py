"""Sign-in: password, one-time code through the outbox, expiry, attempts, lockout with back-off, CSRF, cookies."""
from __future__ import annotations

import re

from auth.otp import MAX_CODE_ATTEMPTS, MAX_PASSWORD_FAILURES
from smart_flow import PASSWORD, hidden_fields, pkce_pair


def login_page(env):
    app = env.app_client()
    _, challenge = pkce_pair()
    response = env.start(env.authorize_params(app.id, challenge=challenge))
    assert response.status_code == 303
    return response.headers["Location"]


def post_password(env, location, username="alice", password=PASSWORD):
    fields = hidden_fields(env.client.get(location).get_data(as_text=True))
    return env.client.post("/auth/login", data=dict(fields, username=username, password=password))


def code_form(env, location):
    """After a correct password: (fields of the code form, response location)."""
    response = post_password(env, location)
    assert response.status_code == 303
    page = env.client.get(response.headers["Location"])
    return hidden_fields(page.get_data(as_text=True)), page


def test_outbox_message_format_email(env):
    env.user(email="alice@example.org", phone="+33611111111")
    fields, page = code_form(env, login_page(env))
    assert "e-mail" in page.get_data(as_text=True)
    messages = env.messages()
    assert len(messages) == 1
    message = messages[0]
    assert set(message) == {"to", "channel", "code", "text"}
    assert message["to"] == "alice@example.org" and message["channel"] == "email"  # e-mail preferred
    assert re.fullmatch(r"\d{6}", message["code"]) and message["code"] in message["text"]
    assert not list(env.outbox.glob(".*"))  # no temporary files left behind


def test_outbox_message_format_sms(env):
    env.user(email=None, phone="+33 6 12 34 56 78")
    code_form(env, login_page(env))
    message = env.messages()[0]
    assert message["to"] == "+33 6 12 34 56 78" and message["channel"] == "sms"
    assert re.fullmatch(r"\d{6}", message["code"]) and message["code"] in message["text"]


def test_code_survives_a_wrong_try(env):
    env.user()
    fields, _ = code_form(env, login_page(env))
    wrong = "000000" if env.last_code() != "000000" else "111111"
    response = env.client.post("/auth/code", data=dict(fields, code=wrong))
    assert response.status_code == 401 and "Wrong code" in response.get_data(as_text=True)
    response = env.client.post("/auth/code", data=dict(fields, code=env.last_code()))
    assert response.status_code == 303 and "/auth/approve" in response.headers["Location"]


def test_code_dies_after_too_many_wrong_tries(env):
    env.user()
    fields, _ = code_form(env, login_page(env))
    good = env.last_code()
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(MAX_CODE_ATTEMPTS):
        env.client.post("/auth/code", data=dict(fields, code=wrong))
    assert MAX_CODE_ATTEMPTS <= 10
    response = env.client.post("/auth/code", data=dict(fields, code=good))
    assert response.status_code in (303, 401)
    assert not (response.status_code == 303 and "/approve" in response.headers.get("Location", ""))


def test_code_expires_after_the_ttl(env):
    env.user()
    fields, _ = code_form(env, login_page(env))
    env.clock.advance(env.settings.otp_ttl + 1)
    response = env.client.post("/auth/code", data=dict(fields, code=env.last_code()))
    assert response.status_code == 401 and "expired" in response.get_data(as_text=True)


def test_code_is_valid_until_the_ttl(env):
    env.user()
    fields, _ = code_form(env, login_page(env))
    env.clock.advance(env.settings.otp_ttl - 5)
    response = env.client.post("/auth/code", data=dict(fields, code=env.last_code()))
    assert response.status_code == 303


def test_otp_ttl_setting(tmp_path, clock):
    from backends import make_store
    from smart_flow import Env
    store = make_store("sqlite", tmp_path)
    env = Env(store, tmp_path / "outbox", clock, otp_ttl=30)
    env.user()
    fields, _ = code_form(env, login_page(env))
    env.clock.advance(31)
    assert env.client.post("/auth/code", data=dict(fields, code=env.last_code())).status_code == 401
    store.close()


def test_lockout_after_repeated_wrong_passwords_with_back_off(env):
    env.user()
    env.user("bob", email="bob@example.org", fhir_user="Patient/p2")
    location = login_page(env)
    for _ in range(MAX_PASSWORD_FAILURES):
        assert post_password(env, location, password="wrong password").status_code == 401
    assert MAX_PASSWORD_FAILURES <= 10
    locked = post_password(env, location)  # the right password, but locked
    assert locked.status_code == 429 and "locked" in locked.get_data(as_text=True)
    assert env.messages() == []  # no code sent while locked
    # per account: bob is not locked
    assert post_password(env, location, username="bob").status_code == 303
    # the lock ends; one more failure locks again, for longer (back-off)
    env.clock.advance(61)
    assert post_password(env, location, password="wrong again").status_code == 401
    env.clock.advance(61)
    assert post_password(env, location).status_code == 429
    env.clock.advance(60)
    assert post_password(env, location).status_code == 303
    # success resets the counter
    assert post_password(env, location, password="wrong").status_code == 401
    assert post_password(env, location).status_code == 303


def test_unknown_usernames_behave_like_wrong_passwords(env):
    location = login_page(env)
    response = post_password(env, location, username="nobody")
    assert response.status_code == 401 and "Wrong username or password" in response.get_data(as_text=True)


def test_csrf_is_required_on_every_form(env):
    env.user()
    location = login_page(env)
    fields = hidden_fields(env.client.get(location).get_data(as_text=True))
    assert any("csrf" in name for name in fields)
    forged = dict(fields, csrf_token="forged", username="alice", password=PASSWORD)
    assert env.client.post("/auth/login", data=forged).status_code == 400
    missing = {k: v for k, v in fields.items() if k != "csrf_token"}
    assert env.client.post("/auth/login", data=dict(missing, username="alice", password=PASSWORD)).status_code == 400
    fields, _ = code_form(env, location)
    assert env.client.post("/auth/code", data=dict(fields, csrf_token="x", code=env.last_code())).status_code == 400
    response = env.client.post("/auth/code", data=dict(fields, code=env.last_code()))
    approve = response.headers["Location"]
    fields = hidden_fields(env.client.get(approve).get_data(as_text=True))
    assert env.client.post("/auth/approve", data=dict(fields, csrf_token="x", approve="approve")).status_code == 400
    # another browser (another session) cannot post this browser's forms either
    other = env.app.test_client()
    assert other.post("/auth/approve", data=dict(fields, approve="approve")).status_code == 400


def test_session_cookie_works_over_loopback_http(env):
    env.user()
    response = env.start(env.authorize_params(env.app_client().id, challenge=pkce_pair()[1]))
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("smart_session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie and "Path=/auth" in cookie


def test_session_id_changes_at_sign_in(env):
    env.user()
    location = login_page(env)
    before = env.client.get_cookie("smart_session", path="/auth").value
    fields, _ = code_form(env, location)
    response = env.client.post("/auth/code", data=dict(fields, code=env.last_code()))
    assert response.status_code == 303
    assert env.client.get_cookie("smart_session", path="/auth").value != before


def test_signed_in_user_is_not_asked_again(env):
    env.user()
    app = env.app_client()
    env.authorization_code(app.id)
    _, challenge = pkce_pair()
    response = env.start(env.authorize_params(app.id, challenge=challenge))
    assert response.status_code == 303 and "/auth/approve" in response.headers["Location"]
    # prompt=login forces a new sign-in
    response = env.start(env.authorize_params(app.id, challenge=challenge, prompt="login"))
    assert "/auth/login" in response.headers["Location"]


def test_pending_request_belongs_to_its_browser(env):
    env.user()
    location = login_page(env)
    rid = location.split("rid=")[1]
    other = env.app.test_client()
    env.sign_in(location)
    response = env.sign_in(f"/auth/login?rid={rid}", browser=other)
    page = other.get(response.headers["Location"])
    assert page.status_code == 400 and "expired or is unknown" in page.get_data(as_text=True)
