"""Camera discovery (ONVIF WS-Discovery, ONVIF, mDNS, probing). Filled by the discovery issue."""
