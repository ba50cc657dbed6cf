// hostenvRotate: change a shared secret on every service that reads it in one
// window (a Rotation request), or plan / check / drift / list backups of / roll back that window
// with `action`. Help: hostenvRotate.txt.
def call(Map config = [:]) {
    def actions = ['deploy': [planKeyEnv: null, planKey: null, expectPlan: null, approvedBy: null],
                   'plan': [planKeyEnv: null, planKey: null],
                   'check': [bind: true], 'drift': [:], 'backups': [:], 'rollback': [to: null, approvedBy: null]]
    def action = config.action ?: 'deploy'
    if (!actions.containsKey(action)) {
        error("hostenvRotate: argument 'action' must be one of ${actions.keySet().join(', ')}, not '${action}'")
    }
    if (!(config.deployments instanceof List) || config.deployments.size() < 2) {
        error("hostenvRotate: argument 'deployments' must list the deployments of every service that reads the shared keys")
    }
    def rest = [:] + config
    rest.remove('action')
    return hostenv.requestStep('hostenvRotate', action, rest, actions[action])
}
