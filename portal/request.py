"""The request Tollgate's app reads: a form's fields with each NUL character read as U+FFFD, as
the API reads its JSON bodies and the portal its query strings (PostgreSQL stores no NUL, and a
name or description typed with one must get an answer, not a 500)."""

from __future__ import annotations

import flask

from .kernel.bodies import without_nul


class TollgateRequest(flask.Request):
    def _load_form_data(self) -> None:
        loaded = "form" in self.__dict__
        super()._load_form_data()
        if loaded:
            return
        form = self.__dict__["form"]
        pairs = list(form.items(multi=True))
        if any("\x00" in name or "\x00" in value for name, value in pairs):
            self.__dict__["form"] = self.parameter_storage_class(
                [(without_nul(name), without_nul(value)) for name, value in pairs]
            )
