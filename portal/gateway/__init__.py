"""The gateway: the operator's own API behind the tenant's plan.

Routes (:mod:`.routes`) are paths of the operator's product declared with ``flask gateway add``;
a call to one is admitted like every protected call, forwarded to its upstream and streamed
back, and metered with what the upstream says it used (:mod:`.forward`). Service tokens
(:mod:`.tokens`) let a service in another process verify customer keys instead.
"""
