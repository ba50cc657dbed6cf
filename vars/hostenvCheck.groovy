// hostenvCheck: validate a Deploy (or, with `deployments`, a Rotation) request
// and resolve every key against the contract, touching no host. Help: hostenvCheck.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvCheck', 'check', config, [:])
}
