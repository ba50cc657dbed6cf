import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.customizers.ImportCustomizer

/**
 * Just enough of a Jenkins pipeline to run the library's vars/ under the Groovy
 * Jenkins runs (2.4): every step the library calls is a stub that records its
 * arguments, and `sh` really runs its script with the environment that withEnv
 * and withCredentials would give it. Credentials come from an in-memory store.
 */
class Pipeline {
    /** Each step call: [step: name, args: what it was given]. */
    List calls = []
    /** What the build log would show (echo, sh output). */
    StringBuilder log = new StringBuilder()
    /** SUCCESS, UNSTABLE or FAILURE (set by `error`). */
    String result = 'SUCCESS'
    /** The pipeline's `env`. */
    Map env = [BUILD_URL: 'https://ci.example/job/vox/7/']
    /** The build's causes, as `currentBuild.getBuildCauses(class)` returns them: who started it. */
    List causes = [[_class: 'hudson.model.Cause$UserIdCause', userId: 'alice', userName: 'Alice']]
    /** Credential id → [type: ..., value | content | username + password]. */
    Map store = [:]
    /** Resource paths another library provides too (libraryResource then fails). */
    Set ambiguous = [] as Set
    /** Files written by writeJSON, with their text at the time, and each request a
     *  step handed the binary through HOSTENV_REQUEST (under `<HOSTENV_WORK>/request.json`). */
    Map written = [:]
    /** Environment variables withEnv and withCredentials have set around the current step. */
    private List<Map> scopes = []
    final File repo
    final File workspace
    final Binding binding = new Binding()
    final GroovyShell shell

    static CompilerConfiguration jenkinsCompiler() {
        def config = new CompilerConfiguration()
        // Jenkins imports these for every pipeline script and library file.
        config.addCompilationCustomizers(new ImportCustomizer().addImports(
            'org.jenkinsci.plugins.workflow.libs.Library', 'com.cloudbees.groovy.cps.NonCPS'))
        return config
    }

    Pipeline(File repo, File workspace) {
        this.repo = repo
        this.workspace = workspace
        workspace.mkdirs()
        shell = new GroovyShell(Pipeline.classLoader, binding, jenkinsCompiler())
        defineSteps()
        new File(repo, 'vars').listFiles().findAll { it.name.endsWith('.groovy') }.each { file ->
            def script = shell.parse(file)
            script.binding = binding
            def name = file.name - '.groovy'
            if (script.metaClass.respondsTo(script, 'call')) {
                binding.setVariable(name, { Object[] args -> script.invokeMethod('call', args) })
            } else {
                binding.setVariable(name, script)
            }
        }
    }

    /** Runs pipeline code (a script's text) and returns what it returned; `error` ends it with PipelineError. */
    def run(String code) {
        def script = shell.parse(code)
        script.binding = binding
        try {
            return script.run()
        } catch (PipelineError stop) {
            result = 'FAILURE'
            throw stop
        }
    }

    /** Every recorded call of `step`. */
    List callsOf(String step) {
        calls.findAll { it.step == step }
    }

    private void record(String step, def args) {
        calls << [step: step, args: args]
    }

    private Map currentEnvironment() {
        def environment = new LinkedHashMap(System.getenv())
        env.each { k, v -> environment[k] = v as String }
        scopes.each { environment.putAll(it) }
        return environment
    }

    private def within(Map variables, Closure body) {
        scopes << variables
        try {
            return body.call()
        } finally {
            scopes.remove(scopes.size() - 1)
        }
    }

    private void defineSteps() {
        binding.setVariable('env', env)
        binding.setVariable('currentBuild', [getBuildCauses: { String type ->
            record('currentBuild.getBuildCauses', type)
            causes.findAll { it._class == type }
        }])
        binding.setVariable('echo', { String text -> record('echo', text); log << text << '\n' })
        binding.setVariable('error', { String message ->
            record('error', message)
            log << 'ERROR: ' << message << '\n'
            throw new PipelineError(message)
        })
        binding.setVariable('unstable', { String message ->
            record('unstable', message)
            log << 'WARNING: ' << message << '\n'
            if (result == 'SUCCESS') { result = 'UNSTABLE' }
        })
        binding.setVariable('pwd', { Map args = [:] ->
            record('pwd', args)
            args.tmp ? workspace.path + '@tmp' : workspace.path
        })
        binding.setVariable('fileExists', { String path ->
            record('fileExists', path)
            resolve(path).exists()
        })
        binding.setVariable('writeFile', { Map args ->
            record('writeFile', args)
            def file = resolve(args.file)
            file.parentFile.mkdirs()
            file.text = args.text
        })
        binding.setVariable('readFile', { Map args ->
            record('readFile', args)
            resolve(args.file).text
        })
        binding.setVariable('writeJSON', { Map args ->
            record('writeJSON', args)
            def file = resolve(args.file)
            file.parentFile.mkdirs()
            file.text = JsonOutput.prettyPrint(JsonOutput.toJson(args.json))
            written[file.path] = file.text
        })
        binding.setVariable('readJSON', { Map args ->
            record('readJSON', args)
            def text = args.text != null ? args.text : resolve(args.file).text
            new JsonSlurper().parseText(text)
        })
        binding.setVariable('libraryResource', { String path ->
            record('libraryResource', path)
            if (path in ambiguous) { throw new IllegalStateException("Library resource ${path} ambiguous among libraries [hostenv, other]") }
            def file = new File(repo, "resources/${path}")
            if (!file.exists()) { throw new IllegalStateException("No such library resource ${path} could be found.") }
            file.text
        })
        binding.setVariable('junit', { Map args ->
            record('junit', args)
            def report = resolve(args.testResults)
            if (!report.exists() && !args.allowEmptyResults) { throw new PipelineError("No test report files were found: ${args.testResults}") }
            if (report.exists()) {
                def suites = new XmlSlurper().parse(report)
                if (suites.testsuite.testcase.failure.size() > 0 && result == 'SUCCESS') { result = 'UNSTABLE' }
            }
        })
        for (type in ['string', 'file', 'usernamePassword', 'sshUserPrivateKey']) {
            def kind = type
            binding.setVariable(kind, { Map args -> record(kind, args); [type: kind] + args })
        }
        binding.setVariable('withEnv', { List entries, Closure body ->
            record('withEnv', entries)
            def variables = [:]
            entries.each { entry ->
                def (name, value) = (entry as String).split('=', 2) as List
                variables[name] = value
            }
            within(variables, body)
        })
        binding.setVariable('withCredentials', { List bindings, Closure body ->
            record('withCredentials', bindings)
            def variables = [:]
            def files = []
            bindings.each { b ->
                def stored = store[b.credentialsId]
                if (stored == null) { throw new PipelineError("Could not find credentials entry with ID '${b.credentialsId}'") }
                if (stored.type != b.type) { throw new PipelineError("Credentials '${b.credentialsId}' is of type '${stored.type}' where '${b.type}' was expected") }
                switch (b.type) {
                    case 'string':
                        variables[b.variable] = stored.value
                        break
                    case 'usernamePassword':
                        variables[b.usernameVariable] = stored.username
                        variables[b.passwordVariable] = stored.password
                        break
                    default:
                        def secretFile = File.createTempFile('secret', '.tmp', new File(workspace.path + '@tmp').with { it.mkdirs(); it })
                        secretFile.text = stored.content
                        files << secretFile
                        variables[b.type == 'file' ? b.variable : b.keyFileVariable] = secretFile.path
                        // As the Credentials Binding plugin does: empty when the key has none.
                        if (b.type == 'sshUserPrivateKey' && b.passphraseVariable) {
                            variables[b.passphraseVariable] = stored.passphrase ?: ''
                        }
                        // The credential's username (a required field of the credential in Jenkins).
                        if (b.type == 'sshUserPrivateKey' && b.usernameVariable) {
                            variables[b.usernameVariable] = stored.username ?: 'root'
                        }
                }
            }
            try {
                within(variables, body)
            } finally {
                files.each { it.delete() }
            }
        })
        binding.setVariable('sh', { Map args ->
            record('sh', args)
            def handed = currentEnvironment()
            if (handed.HOSTENV_REQUEST != null) {
                written["${handed.HOSTENV_WORK}/request.json"] = handed.HOSTENV_REQUEST
            }
            def process = new ProcessBuilder('/bin/sh', '-c', args.script)
                .directory(workspace)
                .redirectErrorStream(true)
            process.environment().clear()
            process.environment().putAll(currentEnvironment())
            def running = process.start()
            running.outputStream.close()
            def output = running.inputStream.text
            def status = running.waitFor()
            log << output
            if (args.returnStatus) { return status }
            if (status != 0) { throw new PipelineError("script returned exit code ${status}") }
            return args.returnStdout ? output : null
        })
    }

    private File resolve(String path) {
        path.startsWith('/') ? new File(path) : new File(workspace, path)
    }
}

