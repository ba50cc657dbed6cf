// The library's steps under Groovy 2.4 (the version Jenkins runs), with the
// pipeline stubbed by Pipeline.groovy and `sh` really running the built binary.
//
//   groovy -cp tests/groovy/stubs:tests/groovy tests/groovy/steps_test.groovy SUITE
//
// Environment: HOSTENV_REPO (the repository), HOSTENV_BINARY (the built binary),
// HOSTENV_HOST_BINARY (the static host program it installs),
// HOSTENV_WORK (a scratch directory). SUITE is `offline` (no hosts) or `testbed`,
// which also needs TESTBED_JSON: {hosts: [addr...], knownHosts, key, store}.
// Prints `ok NAME` per test; exits 1 at the first failure.

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import org.codehaus.groovy.ast.ClassNode
import org.codehaus.groovy.ast.CodeVisitorSupport
import org.codehaus.groovy.ast.builder.AstBuilder
import org.codehaus.groovy.ast.expr.ConstantExpression
import org.codehaus.groovy.ast.expr.GStringExpression
import org.codehaus.groovy.ast.expr.MethodCallExpression
import org.codehaus.groovy.ast.stmt.BlockStatement
import org.codehaus.groovy.control.CompilePhase

repo = new File(System.getenv('HOSTENV_REPO'))
binary = System.getenv('HOSTENV_BINARY')
hostBinary = System.getenv('HOSTENV_HOST_BINARY')
work = new File(System.getenv('HOSTENV_WORK'))
counter = 0

/** Runs one test; the first failure ends the run with exit 1. */
def test(String name, Closure body) {
    try {
        body.call()
        println "ok ${name}"
    } catch (Throwable failure) {
        println "FAILED ${name}: ${failure}"
        failure.printStackTrace()
        System.exit(1)
    }
}

/** The SHA-256 of a file, as SHA256SUMS writes it. */
def sha256(String path) {
    return java.security.MessageDigest.getInstance('SHA-256').digest(new File(path).bytes).encodeHex().toString()
}

/** A fresh pipeline with its own workspace, credentials from `store`, this build's programs pinned. */
def pipeline(Map store) {
    def workspace = new File(work, "workspace-${++counter}")
    def pipeline = new Pipeline(repo, workspace)
    pipeline.store.putAll(store)
    pipeline.env.HOSTENV_BIN = binary
    pipeline.env.HOSTENV_SHA256 = sha256(binary)
    pipeline.env.HOSTENV_HOST_SHA256 = sha256(hostBinary)
    // The admin's known_hosts (a stand-in: the offline suite reaches no host).
    def knownHosts = new File(work, 'admin_known_hosts')
    if (!knownHosts.exists()) { knownHosts.text = '' }
    pipeline.env.HOSTENV_KNOWN_HOSTS = knownHosts.path
    return pipeline
}

/** `pipeline` with `program` (a stand-in) pinned in place of the real binary. */
def pinning(Pipeline pipeline, String program) {
    pipeline.env.HOSTENV_SHA256 = sha256(program)
    return pipeline
}

/** Runs `code` on `pipeline`; the PipelineError it ended with, or null. */
def attempt(Pipeline pipeline, String code) {
    try {
        pipeline.run(code)
        return null
    } catch (PipelineError stop) {
        return stop
    }
}

/** Every secret of the store, in each form a leak could take. */
def secretForms(Map store) {
    def forms = []
    store.values().each { credential ->
        [credential.value, credential.password, credential.content].findAll { it }.each { secret ->
            forms << secret
            forms << JsonOutput.toJson(secret)[1..-2]
            forms << secret.bytes.encodeBase64().toString()
            forms << URLEncoder.encode(secret, 'UTF-8')
        }
    }
    return forms.unique()
}

/** No recorded step argument (sh script text included), request file or log line holds a bound value. */
def assertNothingLeaked(Pipeline pipeline) {
    def forms = secretForms(pipeline.store)
    pipeline.calls.each { call ->
        def text = call.args.toString()
        forms.each { form ->
            assert !text.contains(form): "step ${call.step} was given a secret (${call.args.getClass().simpleName})"
        }
    }
    pipeline.written.each { path, text ->
        forms.each { form -> assert !text.contains(form): "${path} holds a secret" }
    }
    forms.each { form -> assert !pipeline.log.toString().contains(form): 'the build log holds a secret' }
}

/** Where `sh`, `withCredentials` and `error` happened, in order. */
def sequence(Pipeline pipeline) {
    pipeline.calls.findAll { it.step in ['sh', 'withCredentials', 'error', 'unstable', 'junit'] }.collect {
        it.step == 'sh' ? "sh:${it.args.label}" : it.step
    }
}

/** `sha256:<hex>` of the library's catalog, as `hostenv version --json` reports it. */
def catalogDigest() {
    def hash = java.security.MessageDigest.getInstance('SHA-256').digest(new File(repo, 'resources/io/hostenv/catalog.json').bytes)
    return 'sha256:' + hash.encodeHex().toString()
}

/**
 * A fake hostenv that speaks `versions` and answers every action with `result`
 * and `exit`; it reports the pinned version and the library's catalog unless told otherwise.
 */
def fakeBinary(String name, List versions, Map result, int exit, Map version = [:]) {
    def file = new File(work, name)
    def reported = [apiVersion: 'hostenv/v1', kind: 'Version', apiVersions: versions,
                    version: '0.1.0', catalogDigest: catalogDigest()] + version
    file.text = """#!/bin/sh
if [ "\$1" = version ]; then
  echo '${JsonOutput.toJson(reported)}'
  exit 0
fi
cat > /dev/null
echo '${JsonOutput.toJson(result)}'
exit ${exit}
"""
    file.setExecutable(true)
    return file.path
}

/**
 * A stand-in hostenv for walking Jenkinsfile.example: `plan` answers changes
 * pending with a digest, everything else success; each call's arguments and
 * request go to `<name>.log`, one line each (arguments, a tab, the request).
 */
def walkingBinary(String name) {
    def file = new File(work, name)
    def log = new File(work, "${name}.log")
    log.text = ''
    def version = JsonOutput.toJson([apiVersion: 'hostenv/v1', kind: 'Version', apiVersions: ['hostenv/v1'],
                                     version: '0.1.0', catalogDigest: catalogDigest()])
    def plan = JsonOutput.toJson([ok: false, exitCode: 4, planDigest: 'hmac-sha256:' + ('ab' * 32), summary: [planned: 3],
                                  hosts: [], error: [kind: 'changesPending', message: 'a deploy would change 3 of 3 hosts']])
    def done = JsonOutput.toJson([ok: true, exitCode: 0, hosts: [], error: null])
    file.text = """#!/bin/sh
if [ "\$1" = version ]; then echo '${version}'; exit 0; fi
request=\$(cat)
printf '%s\\t%s\\n' "\$*" "\$request" >> '${log}'
case "\$1" in
  plan) echo '${plan}'; exit 4 ;;
  *) echo '${done}'; exit 0 ;;
esac
"""
    file.setExecutable(true)
    return [path: file.path, log: log]
}

/** What a walking binary was asked: [action, args, request] per call. */
def asked(File log) {
    log.readLines().collect { line ->
        def (args, request) = line.split('\t', 2) as List
        [action: args.split(' ')[0], args: args, request: request ? new JsonSlurper().parseText(request) : null]
    }
}

/** Every production credential the library's maps name, with stand-in values, and the plan key. */
def productionStore() {
    def store = ['hostenv-plan-key': [type: 'string', value: 'CANARY-walk-plan-key-0001']]
    ['voxbridge', 'voxcore', 'voxdialler'].each { service ->
        def map = new JsonSlurper().parseText(new File(repo, "resources/io/hostenv/credentials/${service}.json").text)
        def env = map.environments.production
        store[env.sshCredential] = [type: 'sshUserPrivateKey', content: 'CANARY-walk-ssh-key', username: 'root']
        env.credentials.each { c ->
            store[c.id] = c.type == 'usernamePassword' ?
                [type: c.type, username: 'walk-user', password: "CANARY-walk-${c.id}".toString()] :
                [type: c.type, value: "CANARY-walk-${c.id}".toString(), content: "CANARY-walk-${c.id}".toString()]
        }
    }
    return store
}

// Stand-in values for the library's voxbridge credential map (production).
voxbridgeStore = [
    'voxbridge-jwt-secret': [type: 'string', value: 'CANARY-groovy-jwt-"$quote\''],
    'vox-mongodb-uri': [type: 'string', value: 'mongodb://u:CANARY-groovy-mongo@db'],
    'voxbridge-redis-url': [type: 'string', value: 'redis://:CANARY-groovy-redis@cache:6379/0'],
    'vox-production-deploy-key': [type: 'sshUserPrivateKey', content: 'CANARY-groovy-ssh-key'],
]

/** A workspace holding the platform's contracts where the credential maps say. */
def withContracts(Pipeline pipeline) {
    ['voxbridge', 'voxcore', 'voxdialler'].each { service ->
        def dir = new File(pipeline.workspace, service)
        dir.mkdirs()
        new File(dir, '.env.example').text = new File(repo, "examples/${service}/.env.example").text
    }
    return pipeline
}

/** The shell-injection check: every `sh` call whose arguments hold a GString. */
def interpolatedShCalls(String name, String text) {
    def found = []
    def visitor = new CodeVisitorSupport() {
        void visitMethodCallExpression(MethodCallExpression call) {
            if (call.methodAsString == 'sh') {
                call.arguments.visit(new CodeVisitorSupport() {
                    void visitGStringExpression(GStringExpression string) {
                        found << "${name}:${string.lineNumber}"
                    }
                })
            }
            super.visitMethodCallExpression(call)
        }
    }
    new AstBuilder().buildFromString(CompilePhase.CONVERSION, false, text).each { node ->
        if (node instanceof BlockStatement) { node.visit(visitor) }
        if (node instanceof ClassNode) {
            node.methods.each { it.code?.visit(visitor) }
            // Scripts run by name are constants, never GStrings.
            node.fields.findAll { it.name.endsWith('SCRIPT') }.each { field ->
                if (!(field.initialValueExpression instanceof ConstantExpression)) {
                    found << "${name}: ${field.name} is not a constant string"
                }
            }
        }
    }
    return found
}

/**
 * Constructor calls and `Class.method` calls in `text` that the sandbox's
 * default whitelist (sandbox-whitelist.txt) does not allow: each would need a
 * script approval in a folder-level library. Checked by type and method name.
 */
def outsideWhitelist(String name, String text) {
    def allowed = new File(repo, 'tests/groovy/sandbox-whitelist.txt').readLines().findAll { !it.startsWith('#') }
    def permits = { String entry -> allowed.any { it == entry || it.startsWith(entry + ' ') } }
    def found = []
    def visitor = new CodeVisitorSupport() {
        void visitConstructorCallExpression(org.codehaus.groovy.ast.expr.ConstructorCallExpression call) {
            if (!permits("new ${call.type.name}")) { found << "${name}:${call.lineNumber}: new ${call.type.name}" }
            super.visitConstructorCallExpression(call)
        }
        void visitStaticMethodCallExpression(org.codehaus.groovy.ast.expr.StaticMethodCallExpression call) {
            def entry = "staticMethod ${call.ownerType.name} ${call.method}"
            // Line -1: the script class's generated main, not the library's code.
            if (call.lineNumber > 0 && !permits(entry)) {
                found << "${name}:${call.lineNumber}: ${entry}"
            }
            super.visitStaticMethodCallExpression(call)
        }
        void visitMethodCallExpression(MethodCallExpression call) {
            if (call.lineNumber > 0 && call.objectExpression instanceof org.codehaus.groovy.ast.expr.ClassExpression) {
                def entry = "staticMethod ${call.objectExpression.type.name} ${call.methodAsString}"
                if (!permits(entry)) { found << "${name}:${call.lineNumber}: ${entry}" }
            }
            super.visitMethodCallExpression(call)
        }
    }
    // As Jenkins compiles library files: NonCPS imported; names resolved so that types are known.
    def imports = 'import com.cloudbees.groovy.cps.NonCPS\n'
    new AstBuilder().buildFromString(CompilePhase.SEMANTIC_ANALYSIS, false, imports + text).each { node ->
        if (node instanceof BlockStatement) { node.visit(visitor) }
        if (node instanceof ClassNode) {
            node.methods.each { it.code?.visit(visitor) }
            node.fields.each { it.initialValueExpression?.visit(visitor) }
        }
    }
    return found
}


/**
 * The stages of a declarative pipeline, from its text: each with its name,
 * whether it (or a stage around it) runs only on `main` (a `when` with `branch
 * 'main'` or `buildingTag()`, not under `anyOf` or `not`), the label of the
 * agent it runs on, and the calls in its steps (method name and constant named
 * arguments).
 */
def stagesOf(String text) {
    def found = []
    def named = { MethodCallExpression call ->
        def args = [:]
        def list = call.arguments instanceof org.codehaus.groovy.ast.expr.TupleExpression ? call.arguments.expressions : [call.arguments]
        list.each { expression ->
            if (expression instanceof org.codehaus.groovy.ast.expr.MapExpression) {
                expression.mapEntryExpressions.each { entry ->
                    def value = entry.valueExpression instanceof ConstantExpression ? entry.valueExpression.value : '?'
                    args[entry.keyExpression.text] = value
                }
            }
        }
        return args
    }
    def closureOf = { MethodCallExpression call ->
        def list = call.arguments instanceof org.codehaus.groovy.ast.expr.TupleExpression ? call.arguments.expressions : []
        list.find { it instanceof org.codehaus.groovy.ast.expr.ClosureExpression }
    }
    def callsIn = { node ->
        def calls = []
        node?.code?.visit(new CodeVisitorSupport() {
            void visitMethodCallExpression(MethodCallExpression call) {
                calls << call
                super.visitMethodCallExpression(call)
            }
        })
        return calls
    }
    // `branch 'main'` or `buildingTag()` that holds for the whole `when`.
    def mainOnly
    mainOnly = { node ->
        callsIn(node).findAll { it.objectExpression.text == 'this' }.any { call ->
            def name = call.methodAsString
            if (name == 'buildingTag') { return true }
            if (name == 'branch') { return call.arguments.text.contains('main') }
            return false
        } && !callsIn(node).any { it.methodAsString in ['anyOf', 'not'] }
    }
    def walk
    walk = { closure, boolean guarded, String label ->
        callsIn(closure).findAll { it.methodAsString == 'stage' }.each { stage ->
            // Only the stages directly in this block: nested ones are walked with their parent's state.
            def body = closureOf(stage)
            if (body == null || found.any { it.node.is(stage) }) { return }
            def own = callsIn(body)
            def when = own.find { it.methodAsString == 'when' }
            def agent = own.find { it.methodAsString == 'agent' }
            def stageGuarded = guarded || (when != null && mainOnly(closureOf(when)))
            def stageLabel = label
            if (agent != null) {
                def labelCall = callsIn(closureOf(agent)).find { it.methodAsString == 'label' }
                stageLabel = labelCall?.arguments?.expressions?.first()?.value
            }
            def steps = own.find { it.methodAsString == 'steps' }
            def calls = steps == null ? [] : callsIn(closureOf(steps)).collect { [method: it.methodAsString, args: named(it)] }
            found << [node: stage, name: stage.arguments.expressions.first().value, mainOnly: stageGuarded,
                      label: stageLabel, calls: calls]
            def nested = own.find { it.methodAsString == 'stages' }
            if (nested != null) { walk(closureOf(nested), stageGuarded, stageLabel) }
        }
    }
    new AstBuilder().buildFromString(CompilePhase.CONVERSION, false, text).each { node ->
        if (!(node instanceof BlockStatement)) { return }
        def pipelineCall = callsIn([code: node]).find { it.methodAsString == 'pipeline' }
        def top = closureOf(pipelineCall)
        def agent = callsIn(top).find { it.methodAsString == 'agent' }
        def label = agent == null ? null : callsIn(closureOf(agent)).find { it.methodAsString == 'label' }?.arguments?.expressions?.first()?.value
        def stages = callsIn(top).find { it.methodAsString == 'stages' }
        walk(closureOf(stages), false, label)
    }
    return found
}

/**
 * Where a pipeline binds a credential where untrusted code may run: a stage
 * that can run for any branch or pull request with a hostenv step that binds
 * one (all but hostenvLint, hostenvBuildEnv and hostenvCheck with bind: false)
 * or a withCredentials; or a stage that binds on an agent label that such a
 * stage also builds on.
 */
def untrustedBindings(String text) {
    def stages = stagesOf(text)
    def binds = { call ->
        call.method == 'withCredentials' || (call.method.startsWith('hostenv') &&
            !(call.method in ['hostenvLint', 'hostenvBuildEnv']) &&
            !(call.method == 'hostenvCheck' && call.args.bind == false))
    }
    def problems = []
    stages.findAll { !it.mainOnly }.each { stage ->
        stage.calls.findAll(binds).each { problems << "stage '${stage.name}' can run for a pull request and ${it.method} binds credentials there" }
    }
    def untrustedLabels = stages.findAll { !it.mainOnly && it.calls.any { it.method == 'sh' } }*.label as Set
    stages.findAll { it.mainOnly && it.calls.any(binds) }.each { stage ->
        if (stage.label == null || stage.label in untrustedLabels) {
            problems << "stage '${stage.name}' binds credentials on agent '${stage.label}', where pull requests' code also runs"
        }
    }
    return problems
}

def suite = args ? args[0] : 'offline'

if (suite == 'offline') {
    test('every vars/ file and Jenkinsfile.example compile under Groovy 2.4') {
        def shell = new GroovyShell(Pipeline.classLoader, new Binding(), Pipeline.jenkinsCompiler())
        def files = new File(repo, 'vars').listFiles().findAll { it.name.endsWith('.groovy') }
        assert files.size() >= 9
        (files + [new File(repo, 'Jenkinsfile.example')]).each { shell.parse(it) }
        // Every step has its help page.
        files.findAll { it.name != 'hostenv.groovy' }.each { step ->
            def help = new File(step.parentFile, step.name - '.groovy' + '.txt')
            assert help.exists() && help.text.contains('<p>'): "no HTML help for ${step.name}"
        }
    }

    test('Jenkinsfile.example runs every path it shows') {
        def text = new File(repo, 'Jenkinsfile.example').text
        def defaults = [ROTATE_VOXCORE_SECRET: false, CODE_ONLY: false, ROLLBACK_SERVICE: '', ROLLBACK_TO: '1']
        def walk = { String branch, Map params ->
            def fake = walkingBinary("walk-${++counter}")
            def p = pinning(withContracts(pipeline(productionStore())), fake.path)
            p.env.HOSTENV_BIN = fake.path
            def build = new Declarative(p, branch, 'carol')
            build.run(text, defaults + params)
            assertNothingLeaked(p)
            return [build, p, asked(fake.log)]
        }
        def digest = 'hmac-sha256:' + ('ab' * 32)

        // A pull request: build and test, nothing bound at all.
        def (pr, prPipeline, prAsked) = walk('PR-7', [:])
        assert pr.ran == ['Build and test']
        assert prAsked*.action == ['lint', 'check', 'check', 'check']
        assert prPipeline.callsOf('withCredentials').every { it.args == [] }

        // main: check, plan each service, one approval, then each deploy as planned and the console.
        def (main, mainPipeline, mainAsked) = walk('main', [:])
        assert main.ran == ['Build and test', 'Check', 'Plan deploys', 'Approve deploys', 'voxbridge', 'voxcore and voxdialler', 'console']
        assert mainAsked*.action == ['lint'] + ['check'] * 6 + ['plan'] * 3 + ['deploy'] * 3 + ['build-env']
        def deploys = mainAsked.findAll { it.action == 'deploy' }
        assert deploys*.request*.service == ['voxbridge', 'voxcore', 'voxdialler']
        assert deploys.every { it.args.contains("--expect-plan ${digest}") && it.request.audit.by == 'carol' }
        assert main.inputs.size() == 1 && main.inputs[0].submitter == 'platform-leads' && main.inputs[0].submitterParameter == 'approver'
        assert main.commands.containsAll(['./deploy/refresh-code.sh voxbridge', './deploy/refresh-code.sh voxcore', './deploy/refresh-code.sh voxdialler'])

        // A rotation: voxcore and the dialler are left to the window, which is planned, approved and applied.
        def (rotation, rotationPipeline, rotationAsked) = walk('main', [ROTATE_VOXCORE_SECRET: true])
        assert rotation.ran == ['Build and test', 'Check', 'Plan deploys', 'Approve deploys', 'voxbridge',
                                'voxcore and voxdialler', 'console', 'Plan', 'Approve', 'Rotate']
        def single = rotationAsked.findAll { it.action in ['plan', 'deploy'] && it.request.kind == 'Deploy' }
        assert single*.request*.service.unique() == ['voxbridge']
        def window = rotationAsked.findAll { it.request?.kind == 'Rotation' }
        assert window*.action == ['plan', 'deploy'] && window[1].args.contains("--expect-plan ${digest}")
        assert window[1].request.deployments*.service == ['voxcore', 'voxdialler'] && window[1].request.shared == ['VOXCORE_SECRET']
        assert rotation.inputs.size() == 2

        // A rollback: the backups listed, an approval, backup N back; nothing deployed.
        def (rollback, rollbackPipeline, rollbackAsked) = walk('main', [ROLLBACK_SERVICE: 'voxcore', ROLLBACK_TO: '2'])
        assert rollback.ran == ['Build and test', 'Backups', 'Approve rollback', 'Roll back']
        assert rollbackAsked*.action == ['lint', 'check', 'check', 'check', 'backups', 'rollback']
        assert rollbackAsked[-1].args.contains('--to 2') && rollbackAsked[-1].request.service == 'voxcore'
        assert rollbackAsked[-1].request.audit.by == 'carol'
        // Listing and putting back bind the SSH key alone.
        assert rollbackPipeline.callsOf('withCredentials').findAll { it.args }.every { it.args*.credentialsId == ['vox-production-deploy-key'] }

        // On another branch nothing past the build runs, whatever is asked.
        def (other, otherPipeline, otherAsked) = walk('feature', [ROTATE_VOXCORE_SECRET: true, ROLLBACK_SERVICE: 'voxbridge'])
        assert other.ran == ['Build and test'] && otherAsked*.action == ['lint', 'check', 'check', 'check']
    }

    test('Jenkinsfile.example binds credentials only on main, on agents that build no pull request') {
        def stages = stagesOf(new File(repo, 'Jenkinsfile.example').text)
        assert stages*.name.containsAll(['Build and test', 'Deploy', 'Check', 'voxbridge', 'Plan', 'Approve', 'Rotate'])
        assert stages.find { it.name == 'voxbridge' }.mainOnly && stages.find { it.name == 'Rotate' }.label == 'deploy'
        def found = untrustedBindings(new File(repo, 'Jenkinsfile.example').text)
        assert found == [] : found
        // The walk catches what the example did before: production credentials
        // bound by a test stage that runs every pull request's `make test` first.
        def before = """
            pipeline {
                agent { label 'deploy' }
                stages {
                    stage('Test') {
                        steps {
                            sh 'make test'
                            hostenvCheck environment: 'production', service: 'voxbridge', hosts: ['a']
                        }
                    }
                    stage('Deploy') {
                        when { anyOf { branch 'main'; changeRequest() } }
                        steps { hostenvDeploy environment: 'production', service: 'voxbridge', hosts: ['a'] }
                    }
                    stage('Tagged') {
                        when { buildingTag() }
                        steps { withCredentials([string(credentialsId: 'x', variable: 'X')]) { sh 'true' } }
                    }
                }
            }"""
        def problems = untrustedBindings(before)
        assert problems.any { it.contains("stage 'Test' can run for a pull request and hostenvCheck") } : problems
        assert problems.any { it.contains("stage 'Deploy' can run for a pull request and hostenvDeploy") } : problems
        assert problems.any { it.contains("stage 'Tagged' binds credentials on agent 'deploy'") } : problems
    }

    test('no sh call in vars/ interpolates a Groovy string') {
        assert interpolatedShCalls('bad', 'def f(x) { sh "echo ${x}"; sh(script: "a ${x}", returnStatus: true) }').size() == 2
        assert interpolatedShCalls('good', "def f() { sh(script: 'echo \"\$HOME\"', returnStatus: true) }") == []
        new File(repo, 'vars').listFiles().findAll { it.name.endsWith('.groovy') }.each { file ->
            assert interpolatedShCalls(file.name, file.text) == []
        }
    }

    test('the steps call nothing outside the default sandbox whitelist') {
        def bad = outsideWhitelist('bad', "def f() { new LinkedHashMap([:]); new IllegalArgumentException('x'); new Exception('y'); UUID.randomUUID(); System.exit(1) }")
        assert bad.size() == 3 : bad
        assert bad.any { it.contains('new java.util.LinkedHashMap') } && bad.any { it.contains('staticMethod java.lang.System exit') }
        new File(repo, 'vars').listFiles().findAll { it.name.endsWith('.groovy') }.each { file ->
            assert outsideWhitelist(file.name, file.text) == []
        }
    }

    test('arguments are validated by name before anything runs') {
        def p = pipeline(voxbridgeStore)
        def stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['a'], hostz: 1)")
        assert stop.message.startsWith("hostenvDeploy: unknown argument 'hostz'")
        stop = attempt(p, "hostenvDeploy(service: 'voxbridge')")
        assert stop.message == "hostenvDeploy: argument 'hosts' is required"
        stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: 'a')")
        assert stop.message == "hostenvDeploy: argument 'hosts' must be a List, not String"
        stop = attempt(p, "hostenvDeploy(service: 'voxbridge', hosts: ['a'], environment: 'qa')")
        assert stop.message.contains("argument 'environment'") && stop.message.contains('production, staging')
        stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['a'], credentials: [[id: 'x', key: 'K', type: 'secretText']])")
        assert stop.message.contains("'x' has type 'secretText'")
        stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'billing', hosts: ['a'], contract: 'billing/.env.example')")
        assert stop.message.startsWith("hostenvDeploy: argument 'service': 'billing' is not in the library's catalog (voxbridge, voxcore, voxdialler)")
        stop = attempt(p, "hostenvRotate(environment: 'production', shared: ['VOXCORE_SECRET'], deployments: [[service: 'voxcore', hosts: ['a']]])")
        assert stop.message.startsWith("hostenvRotate: argument 'deployments'")
        // No default environment: a deploy to staging hosts never binds production's credentials.
        stop = attempt(p, "hostenvDeploy(service: 'voxbridge', hosts: ['stg-1'])")
        assert stop.message == "hostenvDeploy: argument 'environment' is required"
        stop = attempt(p, "hostenvRotate(shared: ['K'], deployments: [[service: 'voxcore', hosts: ['a']], [service: 'voxdialler', hosts: ['b']]])")
        assert stop.message == "hostenvRotate: argument 'environment' is required"
        assert sequence(p).every { it == 'error' }
    }

    test('a repository file tunes a deploy and never routes it: what would send a secret elsewhere or bind another credential is refused') {
        def p = withContracts(pipeline(voxbridgeStore))
        new File(p.workspace, '.hostenv').mkdirs()
        def file = new File(p.workspace, '.hostenv/voxbridge.json')
        file.text = JsonOutput.toJson([
            rollout: [canary: 1], restart: [timeoutMs: 90000],
            verify: [[url: 'http://{host}:8080/health', deadlineMs: 60000]],
            environments: [production: [rollout: [canary: 1, batch: '50%']], staging: [rollout: [canary: 0]]]])
        p.run("hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-7.internal', 'api-8.internal'])")
        def request = new JsonSlurper().parseText(p.written.values().last())
        assert request.rollout == [canary: 1, batch: '50%'] && request.restart == [timeoutMs: 90000]
        assert request.hosts == ['api-7.internal', 'api-8.internal']
        // What the step says wins.
        p.run("hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-9.internal', 'api-10.internal', 'api-11.internal'], rollout: [canary: 2])")
        assert new JsonSlurper().parseText(p.written.values().last()).rollout == [canary: 2]

        // Each setting that routes or picks credentials, at the top and for one environment.
        def attacks = [
            hosts: ['evil.example'],
            jump: [host: 'bastion.evil.example'],
            knownHosts: '/tmp/planted_known_hosts',
            hostKeyPolicy: 'acceptNew',
            sshUser: 'root',
            sudo: 'never',
            target: [path: '/var/www/html/.env'],
            allowSharedChange: true,
            credentials: [[id: 'github-admin-token', key: 'JWT_SECRET', type: 'string']],
            credentialMap: [contract: 'voxbridge/.env.example', environments: [production: [credentials: []]]],
            values: [MONGODB_URI: 'mongodb://evil.example/loot'],
            sshCredential: 'vox-production-deploy-key',
            sshCertificate: 'some-certificate',
        ]
        attacks.each { key, value ->
            [[(key): value], [environments: [production: [(key): value]]]].each { content ->
                file.text = JsonOutput.toJson(content)
                def q = withContracts(pipeline(voxbridgeStore))
                new File(q.workspace, '.hostenv').mkdirs()
                new File(q.workspace, '.hostenv/voxbridge.json').text = file.text
                def stop = attempt(q, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'])")
                assert stop != null : "${key} was taken from ${file.text}"
                assert stop.message.contains("'${key}' routes secrets or picks credentials") : stop.message
                assert stop.message.contains('set it in ') : stop.message
                assert q.callsOf('withCredentials') == [] && q.callsOf('sh') == []
            }
        }
        // Per-host sources come with `hosts`: refused whole.
        file.text = JsonOutput.toJson([environments: [production: [hosts: [[host: 'api-1.internal', env: [JWT_SECRET: [secretEnv: 'HOSTENV_CRED_GITHUB_ADMIN_TOKEN']]]]]]])
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'])")
        assert stop.message.contains("environments.production: 'hosts' routes secrets")
        // Units root restarts, and a check of another host than the deployed one.
        file.text = JsonOutput.toJson([restart: [units: ['sshd.service']]])
        stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'])")
        assert stop.message.contains("'restart' may hold only 'force' and 'timeoutMs' here")
        file.text = JsonOutput.toJson([verify: [[url: 'http://internal-admin.example/wipe']]])
        stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'])")
        assert stop.message.contains("a 'verify' url here must check the deployed host itself")
        file.text = JsonOutput.toJson([hostz: ['x']])
        stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'])")
        assert stop.message.startsWith("hostenvCheck: .hostenv/voxbridge.json: 'hostz' is not a setting a repository can give")
    }

    test('hostenvRotate binds each credential of both deployments once; hostenvRollback binds only the SSH key') {
        def store = voxbridgeStore + [
            'voxcore-secret': [type: 'string', value: 'CANARY-groovy-voxcore-secret'],
            'voxcore-openai-api-key': [type: 'string', value: 'CANARY-groovy-openai'],
            'voxcore-deepgram-api-key': [type: 'string', value: 'CANARY-groovy-deepgram'],
            'voxcore-elevenlabs-api-key': [type: 'string', value: 'CANARY-groovy-elevenlabs'],
            'vox-otel-api-key': [type: 'string', value: 'CANARY-groovy-otel'],
            'voxcore-minio': [type: 'usernamePassword', username: 'minio', password: 'CANARY-groovy-minio'],
            'voxdialler-livekit': [type: 'usernamePassword', username: 'lk', password: 'CANARY-groovy-livekit']]
        def window = "environment: 'production', shared: ['VOXCORE_SECRET'], deployments: [" +
            "[service: 'voxcore', hosts: ['fleet-1']], [service: 'voxdialler', hosts: ['sip-1']]]"
        def p = withContracts(pipeline(store))
        def result = p.run("return hostenvRotate(action: 'check', ${window})")
        assert result.ok == true && result.deployments*.service == ['voxcore', 'voxdialler']
        def bound = p.callsOf('withCredentials').first().args*.credentialsId
        // The shared secret once, each service's own, no SSH key for a check.
        assert bound.sort() == ['vox-mongodb-uri', 'vox-otel-api-key', 'voxcore-deepgram-api-key', 'voxcore-elevenlabs-api-key',
                                'voxcore-minio', 'voxcore-openai-api-key', 'voxcore-secret', 'voxdialler-livekit']
        def request = new JsonSlurper().parseText(p.written.values().last())
        assert request.kind == 'Rotation' && request.deployments*.audit*.by == ['alice', 'alice']
        assertNothingLeaked(p)

        // A rollback binds the key and nothing else (a stand-in binary answers for the hosts).
        def fake = fakeBinary('hostenv-rollback', ['hostenv/v1'],
            [ok: true, exitCode: 0, hosts: [[host: 'api-1', status: 'restored']], error: null], 0)
        p = pinning(withContracts(pipeline(store)), fake)
        result = p.run("return hostenvRollback(environment: 'production', service: 'voxbridge', hosts: ['api-1'], to: 2, approvedBy: 'carol', binary: '${fake}')")
        assert result.hosts*.status == ['restored']
        assert p.callsOf('withCredentials').first().args*.credentialsId == ['vox-production-deploy-key']
        def rollback = new JsonSlurper().parseText(p.written.values().last())
        assert rollback.audit.by == 'carol'
        // --to reaches the binary through the environment, never the script text.
        assert p.callsOf('withEnv').any { it.args*.toString().contains('HOSTENV_TO=2') }

        // A backups listing binds the key alone too, and prints each backup.
        def listing = [current: [writtenAt: '2026-12-06T21:00:00Z', fingerprints: [JWT_SECRET: 'aa']],
                       kept: [[number: 1, writtenAt: '2026-12-05T10:00:00Z',
                               keys: [added: [], removed: ['OTEL_API_KEY'], changed: ['JWT_SECRET'], unchanged: 3],
                               fingerprints: [JWT_SECRET: 'bb']]]]
        fake = fakeBinary('hostenv-backups', ['hostenv/v1'],
            [ok: true, exitCode: 0, hosts: [[host: 'api-1', status: 'listed', backups: listing]], error: null], 0)
        p = pinning(withContracts(pipeline(store)), fake)
        result = p.run("return hostenvBackups(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${fake}')")
        assert result.hosts*.status == ['listed']
        assert p.callsOf('withCredentials').first().args*.credentialsId == ['vox-production-deploy-key']
        assert p.log.toString().contains('    now: written 2026-12-06T21:00:00Z\n')
        assert p.log.toString().contains('    backup 1, written 2026-12-05T10:00:00Z: removes OTEL_API_KEY; changes JWT_SECRET\n')
    }

    test('a credential map another library shadows is its own error') {
        def p = withContracts(pipeline(voxbridgeStore))
        p.ambiguous << 'io/hostenv/credentials/voxbridge.json'
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains('the credential map io/hostenv/credentials/voxbridge.json cannot be loaded')
        assert stop.message.contains('ambiguous')
        assert p.callsOf('withCredentials') == []
    }

    test('a missing binary fails before any credential is bound') {
        def p = withContracts(pipeline(voxbridgeStore))
        def stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '/nonexistent/hostenv')")
        assert stop.message.contains('/nonexistent/hostenv') && stop.message.contains('does not run')
        assert sequence(p) == ['sh:hostenv version', 'error', 'sh:hostenv cleanup']
    }

    test('no program runs unpinned: a forwarding fake in the cache, or a pin missing, binds nothing') {
        // The attack: another job (same agent user) puts a program in the
        // binary's place that answers `version` as the real one would and
        // dumps its environment otherwise.
        def loot = new File(work, 'loot')
        def forwarding = new File(work, 'forwarding-hostenv')
        forwarding.text = """#!/bin/sh
if [ "\$1" = version ]; then exec '${binary}' "\$@"; fi
env > '${loot.path}'
exec '${binary}' "\$@"
"""
        forwarding.setExecutable(true)
        def p = withContracts(pipeline(voxbridgeStore))
        p.env.HOSTENV_BIN = forwarding.path
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains("forwarding-hostenv` does not have the SHA-256 HOSTENV_SHA256 pins; nothing was bound")
        assert p.callsOf('withCredentials') == []
        assert !loot.exists()
        // Swapped in after the check, before the run: refused by the run's own check, never run.
        p = withContracts(pipeline(voxbridgeStore))
        def swappable = new File(work, 'swappable-hostenv')
        swappable.bytes = new File(binary).bytes
        swappable.setExecutable(true)
        p.env.HOSTENV_BIN = swappable.path
        p.env.HOSTENV_SHA256 = sha256(swappable.path)
        p.binding.setVariable('withCredentials', { List bindings, Closure body ->
            swappable.text = forwarding.text
            p.calls << [step: 'withCredentials', args: bindings]
            body.call()
        })
        stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains('does not have the SHA-256 HOSTENV_SHA256 pins (it was replaced since it was checked?); it was not run')
        assert !loot.exists()
        // Without both pins no step runs a program.
        ['HOSTENV_SHA256', 'HOSTENV_HOST_SHA256'].each { pin ->
            def q = withContracts(pipeline(voxbridgeStore))
            q.env.remove(pin)
            def refused = attempt(q, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
            assert refused.message.contains('set HOSTENV_SHA256 and HOSTENV_HOST_SHA256') : pin
            assert sequence(q) == ['error', 'sh:hostenv cleanup'] : pin
        }
    }

    test('the request goes to the binary in the environment, and its scratch directory is private') {
        def p = withContracts(pipeline(voxbridgeStore))
        def modes = new File(work, 'modes')
        def spy = new File(work, 'spy-hostenv')
        spy.text = """#!/bin/sh
if [ "\$1" != version ]; then stat -c '%a' "\$HOSTENV_WORK" > '${modes.path}'; fi
exec '${binary}' "\$@"
"""
        spy.setExecutable(true)
        pinning(p, spy.path)
        p.run("hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${spy.path}')")
        assert modes.text.trim() == '700'
        // No request file for another process to rewrite: it went through HOSTENV_REQUEST.
        assert p.callsOf('writeJSON') == [] && p.callsOf('writeFile') == []
        def handed = p.callsOf('withEnv').collect { it.args*.toString() }.flatten().find { it.startsWith('HOSTENV_REQUEST=') }
        assert new JsonSlurper().parseText(handed - 'HOSTENV_REQUEST=').service == 'voxbridge'
        // A step that reaches hosts names its known_hosts: the admin's, never the agent user's own.
        def q = withContracts(pipeline(voxbridgeStore))
        q.env.remove('HOSTENV_KNOWN_HOSTS')
        def stop = attempt(q, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains("no known_hosts for 'voxbridge'") && sequence(q) == ['error']
        def admin = new File(work, 'provisioned_known_hosts')
        admin.text = ''
        q.env.HOSTENV_KNOWN_HOSTS = admin.path
        def fake = fakeBinary('hostenv-known', ['hostenv/v1'], [ok: true, exitCode: 0, hosts: [], error: null], 0)
        pinning(q, fake)
        q.run("hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${fake}')")
        assert new JsonSlurper().parseText(q.written.values().last()).ssh.knownHosts == admin.path
    }

    test('SSH settings live in the credential map: the key credential\'s username logs in, known_hosts is a file credential') {
        def store = voxbridgeStore + [
            'vox-production-deploy-key': [type: 'sshUserPrivateKey', content: 'CANARY-groovy-ssh-key', username: 'deploy'],
            'vox-production-known-hosts': [type: 'file', content: 'api-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n']]
        def map = new JsonSlurper().parseText(new File(repo, 'resources/io/hostenv/credentials/voxbridge.json').text)
        map.environments.production.knownHostsCredential = 'vox-production-known-hosts'
        def p = withContracts(pipeline(store))
        p.env.remove('HOSTENV_KNOWN_HOSTS')
        def fake = fakeBinary('hostenv-ssh', ['hostenv/v1'], [ok: true, exitCode: 0, hosts: [], error: null], 0)
        pinning(p, fake)
        p.binding.setVariable('map', map)
        p.run("hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'], credentialMap: map, binary: '${fake}')")
        def request = new JsonSlurper().parseText(p.written.values().last())
        // No user given: the one the key credential holds, read from its binding.
        assert request.ssh.user == null && request.ssh.userEnv == 'HOSTENV_CRED_VOX_PRODUCTION_DEPLOY_KEY_USERNAME'
        assert request.ssh.knownHostsFileEnv == 'HOSTENV_CRED_VOX_PRODUCTION_KNOWN_HOSTS' && request.ssh.knownHosts == null
        def bindings = p.callsOf('withCredentials').last().args
        assert bindings.find { it.credentialsId == 'vox-production-deploy-key' }.usernameVariable == 'HOSTENV_CRED_VOX_PRODUCTION_DEPLOY_KEY_USERNAME'
        assert bindings.find { it.credentialsId == 'vox-production-known-hosts' }.type == 'file'
        assertNothingLeaked(p)

        // The map's sshUser wins over the key's username; a check binds neither SSH credential.
        map.environments.production.sshUser = 'ops'
        p = withContracts(pipeline(store))
        p.binding.setVariable('map', map)
        p.run("hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], credentialMap: map)")
        request = new JsonSlurper().parseText(p.written.values().last())
        assert request.ssh.user == 'ops' && request.ssh.userEnv == null
        assert !p.callsOf('withCredentials').first().args*.credentialsId.any { it.startsWith('vox-production-') && it != 'vox-production-deploy-key' && it.contains('known') }
        // A file on the agent and a credential at once is one too many.
        map.environments.production.knownHosts = '/etc/hostenv/known_hosts'
        p = withContracts(pipeline(store))
        p.binding.setVariable('map', map)
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], credentialMap: map)")
        assert stop.message.contains("give 'knownHosts' (a file on the agent) or 'knownHostsCredential'")
    }

    test('hostenvRequest writes the exact request, secrets as references, for sudoers and host-install') {
        def p = withContracts(pipeline(voxbridgeStore))
        def request = p.run("return hostenvRequest(output: 'hostenv-requests/voxbridge-production.json', environment: 'production', service: 'voxbridge', hosts: ['api-1.internal'], sshUser: 'deploy')")
        def file = new File(p.workspace, 'hostenv-requests/voxbridge-production.json')
        assert new JsonSlurper().parseText(file.text) == request
        assert request.kind == 'Deploy' && request.environment == 'production' && request.ssh.user == 'deploy'
        assert request.env.JWT_SECRET == [secretEnv: 'HOSTENV_CRED_VOXBRIDGE_JWT_SECRET', credentialId: 'voxbridge-jwt-secret']
        // Nothing bound, nothing run.
        assert p.callsOf('withCredentials') == [] && p.callsOf('sh') == []
        assertNothingLeaked(p)
        // The rules sudo will check name this very environment.
        def rules = [binary, 'sudoers', '--request', file.path, '--catalog', new File(repo, 'resources/io/hostenv/catalog.json').path].execute()
        def printed = rules.text
        assert rules.waitFor() == 0 && printed.contains('production') && printed.contains('deploy ALL=(root)') : printed
        for (def bad : ["'../out.json'", "'/tmp/out.json'", "'out.txt'"]) {
            def stop = attempt(p, "hostenvRequest(output: ${bad}, environment: 'production', service: 'voxbridge', hosts: ['a'])")
            assert stop.message.startsWith("hostenvRequest: argument 'output' must be a relative path")
        }
        def stop = attempt(p, "hostenvRequest(output: 'x.json', environment: 'production', service: 'voxbridge', hosts: ['a'], approvedBy: 'bob')")
        assert stop.message.startsWith("hostenvRequest: unknown argument 'approvedBy'")
    }

    test('an incompatible binary fails before any credential is bound') {
        def old = fakeBinary('hostenv-v0', ['hostenv/v0'], [:], 0)
        def p = pinning(withContracts(pipeline(voxbridgeStore)), old)
        def stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${old}')")
        assert stop.message.contains('speaks [hostenv/v0]') && stop.message.contains('needs hostenv/v1')
        assert sequence(p) == ['sh:hostenv version', 'error', 'sh:hostenv cleanup']
        // HOSTENV_BIN is the fallback when the step names no binary.
        p = pinning(withContracts(pipeline(voxbridgeStore)), old)
        p.env.HOSTENV_BIN = old
        assert attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])").message.contains('hostenv-v0')
    }

    test('a binary of another version is refused before any credential is bound; every run gets the library catalog') {
        def other = fakeBinary('hostenv-9', ['hostenv/v1'], [:], 0, [version: '9.9.9'])
        def p = pinning(withContracts(pipeline(voxbridgeStore)), other)
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${other}')")
        assert stop.message.contains('is version 9.9.9; this library is pinned to 0.1.0')
        assert p.callsOf('withCredentials') == []
        // The binary's own catalog does not matter: the run is handed the
        // library's with --catalog, which this stand-in copies out.
        def handed = new File(work, 'handed-catalog.json')
        def catalog = fakeBinary('hostenv-catalog', ['hostenv/v1'],
            [ok: true, exitCode: 0, hosts: [], error: null], 0, [catalogDigest: 'sha256:00'])
        new File(catalog).text = new File(catalog).text.replace('cat > /dev/null\n',
            "cat > /dev/null\nwhile [ \$# -gt 0 ]; do [ \"\$1\" = --catalog ] && cp \"\$2\" '${handed}'; shift; done\n")
        p = pinning(withContracts(pipeline(voxbridgeStore)), catalog)
        p.run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${catalog}')")
        assert handed.text == new File(repo, 'resources/io/hostenv/catalog.json').text
    }

    test('the pinned release is fetched, verified and cached; a wrong checksum binds nothing') {
        // A release archive as scripts/release.sh lays it out, holding this build's binaries.
        def release = new File(work, 'release')
        def unpacked = new File(release, 'hostenv-0.1.0-x86_64-linux')
        unpacked.mkdirs()
        ['hostenv', 'hostenv-host'].each { name ->
            def target = new File(unpacked, name)
            target.bytes = new File(name == 'hostenv' ? binary : hostBinary).bytes
            target.setExecutable(true)
        }
        def tar = new ProcessBuilder('tar', '-czf', 'hostenv-0.1.0-x86_64-linux.tar.gz', 'hostenv-0.1.0-x86_64-linux')
            .directory(release).inheritIO().start()
        assert tar.waitFor() == 0
        def archive = new File(release, 'hostenv-0.1.0-x86_64-linux.tar.gz')
        def sha256 = java.security.MessageDigest.getInstance('SHA-256').digest(archive.bytes).encodeHex().toString()
        def cache = new File(work, 'agent-cache')
        def provisioned = { Map env ->
            def p = withContracts(pipeline(voxbridgeStore))
            p.env.remove('HOSTENV_BIN')
            p.env.putAll([HOSTENV_RELEASE_URL: "file://${release.path}/hostenv-{version}-x86_64-linux.tar.gz",
                          HOSTENV_CACHE: cache.path] + env)
            return p
        }
        def bad = provisioned([HOSTENV_RELEASE_SHA256: '0' * 64])
        def stop = attempt(bad, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")

        assert stop.message.contains('cannot provision hostenv 0.1.0') && stop.message.contains('wrong SHA-256')
        assert bad.callsOf('withCredentials') == []
        assert !new File(cache, '0.1.0').exists()
        def unverified = provisioned([:])
        stop = attempt(unverified, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains('without HOSTENV_RELEASE_SHA256')
        def good = provisioned([HOSTENV_RELEASE_SHA256: sha256])
        def result = good.run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert result.ok == true
        assert new File(cache, '0.1.0/hostenv').canExecute() && new File(cache, '0.1.0/hostenv-host').canExecute()
        // Another job replaces the cached binary with a forwarding fake: the
        // next step sees the cache no longer holds the pinned programs, fetches
        // the release again, and the fake never runs.
        def loot = new File(work, 'cache-loot')
        def cached = new File(cache, '0.1.0/hostenv')
        def real = cached.bytes
        cached.setWritable(true)
        cached.text = """#!/bin/sh
if [ "\$1" = version ]; then exec '${binary}' "\$@"; fi
env > '${loot.path}'
exec '${binary}' "\$@"
"""
        result = provisioned([HOSTENV_RELEASE_SHA256: sha256]).run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert result.ok == true && !loot.exists()
        assert new File(cache, '0.1.0/hostenv').bytes == real
        // Cached: the next run needs no download.
        archive.delete()
        result = provisioned([HOSTENV_RELEASE_SHA256: sha256]).run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert result.ok == true
        // With nothing to fetch again, a replaced cache fails the step before anything is bound.
        cached = new File(cache, '0.1.0/hostenv')
        cached.setWritable(true)
        cached.text = "#!/bin/sh\nenv > '${loot.path}'\n"
        def forged = provisioned([HOSTENV_RELEASE_SHA256: sha256])
        stop = attempt(forged, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.contains('cannot provision hostenv 0.1.0') && !loot.exists()
        assert forged.callsOf('withCredentials') == []
    }

    test('exit 0: hostenvCheck returns the result; the request names variables, never values') {
        def p = withContracts(pipeline(voxbridgeStore))
        def result = p.run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1', 'api-2'])")
        assert result.ok == true && result.exitCode == 0
        assert result.hosts*.status == ['checked', 'checked']
        assert p.result == 'SUCCESS'
        def request = new JsonSlurper().parseText(p.written.values().first())
        assert request.kind == 'Deploy' && request.contract == 'voxbridge/.env.example'
        assert request.env.JWT_SECRET == [secretEnv: 'HOSTENV_CRED_VOXBRIDGE_JWT_SECRET', credentialId: 'voxbridge-jwt-secret']
        assert request.env.MONGODB_DB == [value: 'voxbridge']
        assert request.ssh.identityFileEnv == 'HOSTENV_CRED_VOX_PRODUCTION_DEPLOY_KEY'
        assert request.audit == [by: 'alice', buildUrl: 'https://ci.example/job/vox/7/']
        // A check contacts no host: every service credential is bound, the SSH key is not.
        def bound = p.callsOf('withCredentials').first().args*.credentialsId
        assert bound.sort() == (voxbridgeStore.keySet() - 'vox-production-deploy-key').sort()
        assert sequence(p) == ['sh:hostenv version', 'withCredentials', 'sh:hostenv check', 'junit', 'sh:hostenv cleanup']
        assertNothingLeaked(p)
        // The key's passphrase will be bound beside it (empty when it has none).
        assert request.ssh.passphraseEnv == 'HOSTENV_CRED_VOX_PRODUCTION_DEPLOY_KEY_PASSPHRASE'
        // Nothing is left behind: no scratch directory, no JUnit file.
        def tmp = new File(p.workspace.path + '@tmp')
        assert !(tmp.listFiles() ?: []).any { it.name.startsWith('hostenv-') }
        assert !(new File(p.workspace, 'hostenv-reports').listFiles() ?: []).any { it.name.endsWith('.xml') }
    }

    test('two credentials that would bind one variable fail before anything is bound') {
        def store = voxbridgeStore + ['db': [type: 'usernamePassword', username: 'u', password: 'CANARY-db-pw'],
                                      'db-password': [type: 'string', value: 'CANARY-db-password']]
        def p = withContracts(pipeline(store))
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], credentials: [" +
            "[id: 'voxbridge-jwt-secret', key: 'JWT_SECRET', type: 'string'], [id: 'vox-mongodb-uri', key: 'MONGODB_URI', type: 'string'], " +
            "[id: 'db', type: 'usernamePassword', usernameKey: 'REDIS_URL', passwordKey: 'OTEL_API_KEY'], [id: 'db-password', key: 'LOG_LEVEL', type: 'string']], " +
            "values: [MONGODB_DB: 'voxbridge'])")
        assert stop.message == "hostenv check: credentials 'db' and 'db-password' would both bind the variable HOSTENV_CRED_DB_PASSWORD; rename one"
        assert p.callsOf('withCredentials') == []
        assert sequence(p) == ['sh:hostenv version', 'error', 'sh:hostenv cleanup']
        assertNothingLeaked(p)
    }

    test('an SSH certificate is bound as a file beside the key') {
        def store = voxbridgeStore + ['vox-production-deploy-cert': [type: 'file', content: 'ssh-ed25519-cert-v01@openssh.com AAAA cert']]
        def p = withContracts(pipeline(store))
        def result = p.run("return hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'], sshCertificate: 'vox-production-deploy-cert')")
        assert result.ok == true
        def request = new JsonSlurper().parseText(p.written.values().first())
        assert request.ssh.certificateFileEnv == 'HOSTENV_CRED_VOX_PRODUCTION_DEPLOY_CERT'
        // Like the key, the certificate is for reaching hosts: a check binds neither.
        assert p.callsOf('withCredentials').first().args.every { it.credentialsId != 'vox-production-deploy-cert' }
    }

    test('exit 2: a rejected request fails the build with the reason and the key problems') {
        def store = voxbridgeStore + ['voxbridge-jwt-secret': [type: 'string', value: '']]
        def p = withContracts(pipeline(store))
        def stop = attempt(p, "hostenvCheck(environment: 'production', service: 'voxbridge', hosts: ['api-1'])")
        assert stop.message.startsWith('hostenv check: the request was rejected:')
        assert stop.message.contains('keys: JWT_SECRET (empty)')
        assert p.result == 'FAILURE'
        assertNothingLeaked(p)
    }

    test('exit 3: a host that needs a person fails the build loudly') {
        def fake = fakeBinary('hostenv-exit3', ['hostenv/v1'],
            [ok: false, exitCode: 3, hosts: [[host: 'api-1', status: 'unknown', error: [kind: 'connectionLost', message: 'lost']]],
             error: [kind: 'hostsFailed', message: '1 of 1 hosts failed: `api-1` (connectionLost, state unknown)']], 3)
        def p = pinning(withContracts(pipeline(voxbridgeStore)), fake)
        def stop = attempt(p, "hostenvDeploy(environment: 'production', service: 'voxbridge', hosts: ['api-1'], binary: '${fake}')")
        assert stop.message.startsWith('hostenv deploy: A HOST NEEDS A PERSON (exit 3): 1 of 1 hosts failed')
        assert p.result == 'FAILURE'
        assert p.log.toString().contains('api-1: unknown - connectionLost')
    }

    test('exit 4: hostenvLint marks the build unstable and returns the findings') {
        def repository = new File(work, 'lint-repo')
        repository.mkdirs()
        ['git init -q', 'mkdir -p voxbridge', 'cp "$HOSTENV_REPO/examples/voxbridge/.env.example" voxbridge/',
         'echo JWT_SECRET=x > voxbridge/.env', 'git add -f voxbridge'].each { command ->
            def process = new ProcessBuilder('/bin/sh', '-c', command).directory(repository).inheritIO().start()
            assert process.waitFor() == 0
        }
        def p = pipeline([:])
        def result = p.run("return hostenvLint(path: '${repository.path}', services: ['voxbridge'])")
        assert p.result == 'UNSTABLE'
        assert result.exitCode == 4
        assert result.findings*.kind.contains('envFileTracked')
        assert p.callsOf('unstable').size() == 1
        assert p.callsOf('junit').size() == 1
        def stop = attempt(pipeline([:]), "hostenvLint(services: ['nope'])")
        assert stop.message.contains("no credential map for 'nope'")
    }

    test('exit 1: a build-env that cannot write fails the build; one that can writes the file') {
        def p = pipeline([:])
        new File(p.workspace, 'console').mkdirs()
        new File(p.workspace, 'console/.env.example').text = 'VITE_API_URL=\nVITE_BRAND_NAME=\n'
        new File(p.workspace, 'blocked').text = 'a file, not a directory'
        def stop = attempt(p, "hostenvBuildEnv(contract: 'console/.env.example', values: [VITE_API_URL: 'https://api.example', VITE_BRAND_NAME: 'Ori'], output: 'blocked/.env')")
        assert stop.message.startsWith('hostenv build-env failed: cannot write')
        p = pipeline([:])
        new File(p.workspace, 'console').mkdirs()
        new File(p.workspace, 'console/.env.example').text = 'VITE_API_URL=\nVITE_BRAND_NAME=\n'
        def result = p.run("return hostenvBuildEnv(contract: 'console/.env.example', values: [VITE_API_URL: 'https://api.example', VITE_BRAND_NAME: 'Ori'], output: 'console/.env')")
        assert result.output.written == true
        assert new File(p.workspace, 'console/.env').text.contains('VITE_BRAND_NAME=')
        assert p.callsOf('withCredentials')*.args == [[]]
    }
}

if (suite == 'testbed') {
    def testbed = new JsonSlurper().parseText(System.getenv('TESTBED_JSON'))
    def store = testbed.store
    def map = [service: 'voxbridge', contract: 'voxbridge.env.example', environments: [production: [
        sshCredential: 'testbed-key',
        credentials: [[id: 'tb-jwt', key: 'JWT_SECRET', type: 'string'],
                      [id: 'tb-mongo', key: 'MONGODB_URI', type: 'string'],
                      [id: 'tb-redis', key: 'REDIS_URL', type: 'string']],
        values: [MONGODB_DB: 'voxbridge', LOG_LEVEL: 'info'],
        optional: ['HEALTH_MODE']]]]
    def deploy = { Pipeline p, String step, Map extra ->
        new File(p.workspace, 'voxbridge.env.example').text = testbed.contract
        def config = [service: 'voxbridge', environment: 'production', hosts: testbed.hosts, credentialMap: map, knownHosts: testbed.knownHosts,
                      allowSharedChange: true, restart: [timeoutMs: 20000],
                      verify: [[url: 'http://{host}:8080/health', intervalMs: 100, deadlineMs: 8000, consecutive: 2]]] + extra
        p.binding.setVariable('config', config)
        return p.run("return ${step}(config)")
    }

    test('hostenvDeploy lands the credentials on the hosts') {
        def p = pipeline(store.first)
        def result = deploy(p, 'hostenvDeploy', [:])
        assert result.ok == true
        assert result.hosts*.status.every { it in ['deployed', 'unchanged'] }
        assert p.result == 'SUCCESS'
        assert p.callsOf('junit').size() == 1
        assertNothingLeaked(p)
    }

    test('exit 4: hostenvPlan returns pending changes; hostenvDrift marks the build unstable') {
        def p = pipeline(store.second)
        def plan = deploy(p, 'hostenvPlan', [:])
        assert plan.exitCode == 4 && plan.hosts*.status.every { it == 'planned' }
        assert p.result == 'SUCCESS'
        def drift = deploy(p, 'hostenvDrift', [:])
        assert drift.exitCode == 4 && drift.hosts*.status.every { it == 'drifted' }
        assert p.result == 'UNSTABLE'
        assertNothingLeaked(p)
    }

    test('a reviewed deploy: plan with a bound key, approval recorded, deploy only what was planned') {
        def p = pipeline(store.second)
        def plan = deploy(p, 'hostenvPlan', [planKey: 'plan-key'])
        assert plan.exitCode == 4 && plan.planDigest ==~ /hmac-sha256:[0-9a-f]{64}/
        // What `input(submitterParameter: 'approver')` returns is the approver.
        def approved = deploy(p, 'hostenvDeploy', [planKey: 'plan-key', expectPlan: plan.planDigest, approvedBy: 'bob'])
        assert approved.hosts*.status.every { it == 'deployed' }
        def requests = p.written.findAll { path, text -> path.endsWith('request.json') }.values().collect { new JsonSlurper().parseText(it) }
        assert requests.last().audit.by == 'bob'
        // The hosts changed since that plan: the same digest now touches nothing.
        def after = pipeline(store.first)
        def stop = null
        try { deploy(after, 'hostenvDeploy', [planKey: 'plan-key', expectPlan: plan.planDigest]) } catch (PipelineError e) { stop = e }
        assert stop != null && stop.message.contains('planMismatch')
        // Back to the first generation; without an approver the build's user answers.
        def back = deploy(after, 'hostenvDeploy', [:])
        assert back.hosts*.status.every { it == 'deployed' }
        def last = new JsonSlurper().parseText(after.written.findAll { path, text -> path.endsWith('request.json') }.values().last())
        assert last.audit.by == 'alice'
        assertNothingLeaked(p)
        assertNothingLeaked(after)
    }

    test('hostenvBackups lists what each backup would change, binding only the SSH key') {
        def p = pipeline(store.first)
        def listed = deploy(p, 'hostenvBackups', [:])
        assert listed.ok == true && listed.hosts*.status.every { it == 'listed' }
        // The hosts hold the first generation; a backup holds the second.
        assert listed.hosts.every { host -> host.backups.kept.any { 'JWT_SECRET' in it.keys.changed } }
        assert p.callsOf('withCredentials').first().args*.credentialsId == ['testbed-key']
        assert p.log.toString() =~ /(?m)^    backup 1, written \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: /
        assertNothingLeaked(p)
    }

    test('exit 1: a deploy whose health check fails is rolled back and fails the build') {
        def p = pipeline(store.second)
        def failing = [values: [MONGODB_DB: 'voxbridge', LOG_LEVEL: 'info', HEALTH_MODE: 'fail'],
                       verify: [[url: 'http://{host}:8080/health', intervalMs: 100, deadlineMs: 1000, consecutive: 1]]]
        def stop = null
        try { deploy(p, 'hostenvDeploy', failing) } catch (PipelineError e) { stop = e }
        assert stop != null && stop.message.startsWith('hostenv deploy failed: ')
        assert stop.message.contains('healthCheckFailed, rolled back')
        assert p.result == 'FAILURE'
        assertNothingLeaked(p)
    }
}

// A Jenkins admin's first day, as docs/jenkins.md's install walkthrough has
// it, in two phases around what root does on the host (tests/integration/jenkins.rs):
// `request` writes the request with hostenvRequest; `deploy` deploys staging.
// FIRST_DAY_JSON: {dir, hosts, knownHosts, key, contract, store}.
if (suite == 'first-day') {
    def day = new JsonSlurper().parseText(System.getenv('FIRST_DAY_JSON'))
    def phase = System.getenv('FIRST_DAY_PHASE')
    // The library's voxbridge map, its staging environment set up as the walkthrough says:
    // an SSH key credential whose username is the login user, the hosts' keys as a file credential.
    def map = new JsonSlurper().parseText(new File(repo, 'resources/io/hostenv/credentials/voxbridge.json').text)
    map.contract = 'voxbridge.env.example'
    map.environments.staging.sshCredential = 'staging-deploy-key'
    map.environments.staging.knownHostsCredential = 'staging-known-hosts'
    map.environments.staging.credentials = [[id: 'tb-jwt', key: 'JWT_SECRET', type: 'string'],
                                            [id: 'tb-mongo', key: 'MONGODB_URI', type: 'string'],
                                            [id: 'tb-redis', key: 'REDIS_URL', type: 'string']]
    map.environments.staging.optional = ['HEALTH_MODE']  // the testbed's contract has no OTEL_API_KEY
    def store = day.store + [
        'staging-deploy-key': [type: 'sshUserPrivateKey', content: day.key, username: 'deploy'],
        'staging-known-hosts': [type: 'file', content: new File(day.knownHosts).text]]
    // One workspace for both phases; no HOSTENV_KNOWN_HOSTS: the map's credential is the only source.
    def p = new Pipeline(repo, new File(day.dir, 'workspace'))
    p.store.putAll(store)
    p.env.HOSTENV_BIN = binary
    p.env.HOSTENV_SHA256 = sha256(binary)
    p.env.HOSTENV_HOST_SHA256 = sha256(hostBinary)
    new File(p.workspace, 'voxbridge.env.example').text = day.contract
    p.binding.setVariable('map', map)
    p.binding.setVariable('hosts', day.hosts)
    // The same arguments in both phases: the request root installs from is
    // the deploy's own (another restart timeout, say, is hostProgramMismatch).
    // The testbed hosts hold other values of the shared MONGODB_URI already.
    def same = "environment: 'staging', service: 'voxbridge', hosts: hosts, credentialMap: map, allowSharedChange: true, restart: [timeoutMs: 20000]"
    if (phase == 'request') {
        test('first day: hostenvRequest writes the request root installs from') {
            def request = p.run("return hostenvRequest(output: 'hostenv-requests/voxbridge-staging.json', ${same})")
            assert request.ssh.userEnv && request.ssh.knownHostsFileEnv && request.environment == 'staging'
            assert p.callsOf('withCredentials') == [] && p.callsOf('sh') == []
        }
    } else {
        test('first day: hostenvDeploy to staging as the key credential\'s user') {
            def result = p.run("return hostenvDeploy(${same})")
            assert result.ok == true && result.hosts*.status == ['deployed']
            assertNothingLeaked(p)
        }
    }
}
