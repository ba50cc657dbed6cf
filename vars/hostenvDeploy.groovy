// hostenvDeploy: deploy one service's .env to its hosts, restart, verify, roll
// back what fails. Help: hostenvDeploy.txt.
def call(Map config = [:]) {
    return hostenv.requestStep('hostenvDeploy', 'deploy', config, [planKeyEnv: null, planKey: null, expectPlan: null, approvedBy: null])
}
