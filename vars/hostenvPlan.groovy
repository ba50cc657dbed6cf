// hostenvPlan: what a deploy (or, with `deployments`, a rotation) would change
// on each host, writing nothing. Returns the result; changes pending do not
// fail the build. Help: hostenvPlan.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvPlan', 'plan', config, [planKeyEnv: null, planKey: null])
}
