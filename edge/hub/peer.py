"""Who is calling: the enrolled device behind a TLS client certificate (docs/protocol.md §4.2, §8.1).

One check for every endpoint a box reaches after enrollment (the control channel, the media streams): the
certificate must be the one this hub issued at the device's latest enrollment.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge.hub.state import Device, HubState


async def enrolled_device(request: web.Request, state: HubState) -> Device | web.Response:
    """The enrolled device whose *current* client certificate the caller presented, or the refusal to send:
    401 ``no_client_cert``, 403 ``not_enrolled`` (docs/protocol.md §4.2, §8.1). A certificate from another CA
    never gets here: the TLS handshake fails."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return refuse(401, "no_client_cert", "present the client certificate this hub issued")
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    device_id = str(cns[0].value) if cns else ""
    device = await asyncio.to_thread(state.device, device_id) if device_id else None
    if device is None or x509.load_pem_x509_certificate(device.client_cert.encode()).public_bytes(
        Encoding.DER
    ) != bytes(der):
        # Unknown device, or a certificate superseded by a later enrollment.
        return refuse(403, "not_enrolled", "this client certificate is not an enrolled device's")
    return device


def refuse(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)
