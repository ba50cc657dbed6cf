// hostenvCheck: validate a Deploy (or, with `deployments`, a Rotation) request
// and resolve every key against the contract, touching no host. Help: hostenvCheck.txt.
// `bind: false` binds no credential at all: only names, contracts and shapes
// are checked, so it may run where untrusted code runs (a pull request's build).
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvCheck', 'check', config, [bind: true])
}
