"""An id too large for its column is a 404 like any other unknown id, never a database error."""

from __future__ import annotations

import re

import pytest

from tests.conftest import csrf_token
from tests.portal_helpers import sign_in

PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


@pytest.mark.parametrize("big", [2**31, 2**63, 10**30])
def test_an_id_past_the_column_is_a_404(app, client, portal_tenant, big):
    sign_in(client, portal_tenant.owner)
    urls = [
        PARAM.sub(str(big), rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("web.") and "GET" in rule.methods and "_id>" in rule.rule
    ]
    assert len(urls) >= 7
    for url in urls:
        assert client.get(url).status_code == 404, url
    token = csrf_token(client.get("/dashboard").text)
    posts = [
        PARAM.sub(str(big), rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("web.") and "POST" in rule.methods and "_id>" in rule.rule
    ]
    assert len(posts) >= 15
    for url in posts:
        assert client.post(url, data={"csrf_token": token}).status_code == 404, url
