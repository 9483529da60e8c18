"""Identity from ~/.claude.json and project-name templating."""

import json

from opik_cipx.materialize.identity import read_identity, render_template, template_values


def test_identity_fields_and_templating(tmp_path):
    path = tmp_path / ".claude.json"
    path.write_text(json.dumps({"oauthAccount": {
        "emailAddress": "ada@example.com", "accountUuid": "u-1", "displayName": "Ada",
        "organizationUuid": "o-1", "organizationName": "Acme", "billingType": "stripe_subscription",
        "organizationRole": "admin"}}))
    ident = read_identity(path)
    assert ident == {"user_email": "ada@example.com", "user_uuid": "u-1", "display_name": "Ada",
                     "org_uuid": "o-1", "org_name": "Acme", "billing_type": "stripe_subscription"}
    values = template_values(ident)
    rendered = render_template("cc-{username}-{org_name}-{email}-{user_email}-{nope}-{user_uuid}", values)
    assert rendered == "cc-ada-Acme-ada@example.com-ada@example.com-{nope}-u-1"
    assert render_template("{hostname}", values) == values["hostname"] != ""


def test_missing_file_or_account_gives_nones_and_literal_tokens(tmp_path):
    assert read_identity(tmp_path / "absent.json") == dict.fromkeys(
        ["user_email", "user_uuid", "display_name", "org_uuid", "org_name", "billing_type"])
    (tmp_path / "bad.json").write_text("{not json")
    assert read_identity(tmp_path / "bad.json")["user_email"] is None
    values = template_values(read_identity(tmp_path / "absent.json"))
    assert render_template("proj-{username}", values) == "proj-{username}"
    assert render_template("a{b", values) == "a{b"
