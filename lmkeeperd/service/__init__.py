"""Running lmkeeperd as a service: systemd units, the launchd agent, and the
`lmkeeperd service install | uninstall | status` commands.

`render` turns parameters into unit and plist text (pure); `manage` plans and
carries out installs, removals and status queries; `cli` is the typer app the
main CLI mounts as `lmkeeperd service`.
"""
