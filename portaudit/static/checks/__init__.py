"""The static rules, one module per family, as pure functions from indexed definitions to findings.

:mod:`.presence`, :mod:`.signature`, :mod:`.citation` and :mod:`.simplification` compare one
upstream definition with its port (locations through :mod:`.site`); :mod:`.hygiene` checks the
manifest itself (repeats, waivers, deviations); :mod:`.runner` applies them all to every entry of
a manifest. Nothing here prints, exits or writes. Codes are documented in
:mod:`portaudit.static.findings` and docs/codes.md.
"""
