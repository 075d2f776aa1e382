"""Device registration (issue #4): challenge–response over a peaq DID, IoT provisioning
(thing, certificate, per-device policy), the device registry, and a client helper for devices.
"""
