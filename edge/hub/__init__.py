"""The reference police hub: the counterpart of the box for tests, demonstrations and hub vendors.

This is the police side. The box's modules never import it (a layering test holds that); it reuses the
box's protocol libraries (:mod:`edge.jws`, :mod:`edge.uplink.keyset`, the enrollment code format).
"""
