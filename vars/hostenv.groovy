import groovy.json.JsonOutput

// The engine behind the hostenv* steps: builds requests from step arguments
// and the library's credential maps, binds the credentials, runs the binary and
// turns its JSON result into the build's outcome.
//
// Secrets never pass through Groovy: a request names the environment variables
// withCredentials binds, every path reaches the shell through withEnv, and the
// shell scripts are constant single-quoted strings.

// `hostenv version --json` must list this before any credential is bound.
@groovy.transform.Field
static final String API_VERSION = 'hostenv/v1'

// The release this library is pinned to (the crate's version; a test keeps them
// equal): a binary of another version is refused.
@groovy.transform.Field
static final String BINARY_VERSION = '0.1.0'

// The library's own resources live under its package, so that another library's
// `catalog.json` or `credentials/` cannot shadow them (libraryResource searches all).
@groovy.transform.Field
static final String RESOURCES = 'io/hostenv'

// The services this library deploys: every run hands it to the binary
// (`--catalog`), so a team adds a service by editing its copy of the library,
// never by building another binary. It comes from the library alone, never
// from a workspace, because it names the paths root writes and the units root
// restarts.
@groovy.transform.Field
static final String CATALOG = 'io/hostenv/catalog.json'

// Where JUnit files go, relative to the workspace (the junit step reads from there).
@groovy.transform.Field
static final String REPORTS = 'hostenv-reports'

// Every script that runs a program first checks it against its pinned SHA-256
// (HOSTENV_PIN), in the same script, right before running it: a file another
// job of the agent's user swapped in is refused, never run (exit 97). The
// step's scratch directory is made 0700 and everything written there 0600.

@groovy.transform.Field
static final String VERSION_SCRIPT = '''set +x
umask 077
mkdir -p -m 700 "$HOSTENV_WORK"
binary=$(command -v -- "$HOSTENV_BINARY") || exit 127
if [ "$(sha256sum < "$binary" | cut -d' ' -f1)" != "$HOSTENV_PIN" ]; then
  echo "hostenv: $binary does not have the pinned SHA-256 (HOSTENV_SHA256)" >&2; exit 97
fi
"$binary" version --json > "$HOSTENV_WORK/version.json"'''

// Fetches the pinned release once per agent and version: the archive's
// SHA-256 must be HOSTENV_ARCHIVE_SHA256 or nothing is unpacked, and each program must
// have its pinned digest or it is not used. A cache that no longer holds the
// pinned programs (another job replaced one) is fetched again.
@groovy.transform.Field
static final String PROVISION_SCRIPT = '''set +x
set -eu
umask 077
mkdir -p -m 700 "$HOSTENV_WORK"
pinned() { [ -f "$1" ] && [ "$(sha256sum < "$1" | cut -d' ' -f1)" = "$2" ]; }
cache="${HOSTENV_CACHE:-${HOME:-/tmp}/.cache/hostenv}/$HOSTENV_VERSION"
if pinned "$cache/hostenv" "$HOSTENV_PIN" && pinned "$cache/hostenv-host" "$HOSTENV_HOST_PIN"; then
  echo "$cache/hostenv" > "$HOSTENV_WORK/binary"; exit 0
fi
mkdir -p "$HOSTENV_WORK/download"
archive="$HOSTENV_WORK/download/release.tar.gz"
curl -fsSL --proto '=https,file' -o "$archive" "$HOSTENV_URL"
if ! echo "$HOSTENV_ARCHIVE_SHA256  $archive" | sha256sum -c --status -; then
  echo "hostenv: the release at $HOSTENV_URL does not have the SHA-256 $HOSTENV_ARCHIVE_SHA256" >&2; exit 3
fi
tar -xzf "$archive" -C "$HOSTENV_WORK/download"
unpacked="$HOSTENV_WORK/download/hostenv-$HOSTENV_VERSION-x86_64-linux"
if ! pinned "$unpacked/hostenv" "$HOSTENV_PIN" || ! pinned "$unpacked/hostenv-host" "$HOSTENV_HOST_PIN"; then
  echo "hostenv: the release's programs do not have the pinned SHA-256s (HOSTENV_SHA256, HOSTENV_HOST_SHA256)" >&2; exit 3
fi
mkdir -p "$(dirname "$cache")"
fresh="$cache.new.$$"
mkdir "$fresh"
cp "$unpacked/hostenv" "$unpacked/hostenv-host" "$fresh/"
chmod 500 "$fresh/hostenv" "$fresh/hostenv-host"
rm -rf -- "$cache"
mv -T "$fresh" "$cache" 2>/dev/null || rm -rf "$fresh"
echo "$cache/hostenv" > "$HOSTENV_WORK/binary"'''

// The request travels in HOSTENV_REQUEST, straight from the step into the
// binary's stdin: no file another process could rewrite in between. Optional
// flags come from variables that may be empty, so the script never varies.
@groovy.transform.Field
static final String RUN_SCRIPT = '''set +x
umask 077
binary=$(command -v -- "$HOSTENV_BINARY") || exit 127
if [ "$(sha256sum < "$binary" | cut -d' ' -f1)" != "$HOSTENV_PIN" ]; then
  echo "hostenv: $binary does not have the pinned SHA-256 (HOSTENV_SHA256)" >&2; exit 97
fi
export HOSTENV_HOST_PROGRAM_SHA256="$HOSTENV_HOST_PIN"
mkdir -p "$(dirname "$HOSTENV_JUNIT")"
printf '%s' "$HOSTENV_CATALOG" > "$HOSTENV_WORK/catalog.json"
set -- --catalog "$HOSTENV_WORK/catalog.json"
if [ -n "${HOSTENV_TO:-}" ]; then set -- "$@" --to "$HOSTENV_TO"; fi
if [ -n "${HOSTENV_PLAN_KEY_ENV:-}" ]; then set -- "$@" --plan-key-env "$HOSTENV_PLAN_KEY_ENV"; fi
if [ -n "${HOSTENV_EXPECT_PLAN:-}" ]; then set -- "$@" --expect-plan "$HOSTENV_EXPECT_PLAN"; fi
if [ "$HOSTENV_ACTION" = check ]; then set -- "$@" --ssh-unbound; fi
if [ -n "${HOSTENV_UNBOUND:-}" ]; then set -- "$@" --secrets-unbound; fi
printf '%s' "$HOSTENV_REQUEST" | "$binary" "$HOSTENV_ACTION" --junit "$HOSTENV_JUNIT" "$@" > "$HOSTENV_WORK/result.json"'''

// A step's scratch directory and JUnit file go once the step has ended.
@groovy.transform.Field
static final String CLEANUP_SCRIPT = '''set +x
rm -rf -- "$HOSTENV_WORK"
if [ -n "${HOSTENV_JUNIT:-}" ]; then rm -f -- "$HOSTENV_JUNIT"; fi'''

@groovy.transform.Field
static final String LINT_SCRIPT = '''set +x
umask 077
binary=$(command -v -- "$HOSTENV_BINARY") || exit 127
if [ "$(sha256sum < "$binary" | cut -d' ' -f1)" != "$HOSTENV_PIN" ]; then
  echo "hostenv: $binary does not have the pinned SHA-256 (HOSTENV_SHA256)" >&2; exit 97
fi
mkdir -p "$(dirname "$HOSTENV_JUNIT")"
set --
for map in "$HOSTENV_WORK"/maps/*.json; do
  if [ -e "$map" ]; then set -- "$@" --credentials "$map"; fi
done
"$binary" lint "$HOSTENV_LINT_PATH" --junit "$HOSTENV_JUNIT" "$@" > "$HOSTENV_WORK/result.json"'''

// The exit of a script that refused a program without the pinned SHA-256.
@groovy.transform.Field
static final int NOT_PINNED = 97

// The longest request a step hands the binary through the environment (Linux
// takes at most 128 KiB in one variable).
@groovy.transform.Field
static final int MAX_REQUEST_CHARS = 120000

// An argument error is a plain Exception (a constructor the sandbox's default
// whitelist allows, unlike IllegalArgumentException) whose message starts with
// this, so a step tells it from any other failure.
@groovy.transform.Field
static final String INVALID = 'hostenv: invalid argument: '

/** An argument error naming the step and the argument. */
@NonCPS
Exception invalid(String message) {
    return new Exception(INVALID + message)
}

/** The words of an argument error, or null when `failure` is something else. */
@NonCPS
String invalidMessage(Exception failure) {
    def message = failure.message ?: ''
    return message.startsWith(INVALID) ? message.substring(INVALID.length()) : null
}

/** Runs `body`; an argument error it throws fails the build with its own words. */
def checked(Closure body) {
    try {
        return body.call()
    } catch (Exception failure) {
        def message = invalidMessage(failure)
        if (message == null) {
            throw failure
        }
        error(message)
    }
}

// Arguments every step takes besides its own.
@groovy.transform.Field
static final Map COMMON_DEFAULTS = [binary: null, junit: true]

// The arguments of one deployment (hostenvDeploy, and each entry of hostenvRotate's `deployments`).
@groovy.transform.Field
static final Map DEPLOYMENT_DEFAULTS = [
    service: null, hosts: null, environment: null, contract: null,
    credentials: null, values: null, optional: null, credentialMap: null,
    sshCredential: null, sshCertificate: null, sshUser: null, knownHosts: null, knownHostsCredential: null,
    hostKeyPolicy: null,
    sudo: null, jump: null, target: null, restart: null, restartForce: null,
    verify: null, rollout: null, rollbackOnFailure: null, allowSharedChange: null,
    purgeBackupsOf: null, deadlineMs: null,
]

@groovy.transform.Field
static final List CREDENTIAL_TYPES = ['string', 'file', 'sshUserPrivateKey', 'usernamePassword']

/**
 * Checks `config` against `defaults` and returns the two merged; an unknown
 * argument or a missing required one (`required`) names itself.
 */
@NonCPS
Map arguments(String step, Map config, Map defaults, List required) {
    def known = [:] + COMMON_DEFAULTS
    known.putAll(defaults)
    for (def name : config.keySet()) {
        if (!known.containsKey(name)) {
            throw invalid("${step}: unknown argument '${name}' (known: ${known.keySet().join(', ')})")
        }
    }
    def merged = [:] + known
    merged.putAll(config)
    for (def name : required) {
        if (merged[name] == null || merged[name] == '' || merged[name] == []) {
            throw invalid("${step}: argument '${name}' is required")
        }
    }
    return merged
}

/** Throws, naming the argument, unless `value` is an instance of `type` (or null when allowed). */
@NonCPS
void expect(String step, String name, def value, Class type, boolean nullable = true) {
    if (value == null && nullable) {
        return
    }
    if (!type.isInstance(value)) {
        def given = value == null ? 'nothing' : value.getClass().simpleName
        throw invalid("${step}: argument '${name}' must be a ${type.simpleName}, not ${given}")
    }
}

/** The credential map of `service` from resources/io/hostenv/credentials/, or null when the library has none. */
Map credentialMap(String service) {
    def text = credentialMapText(service)
    return text == null ? null : readJSON(text: text, returnPojo: true)
}

/**
 * The text of resources/io/hostenv/credentials/<service>.json, or null when the
 * library has none; any other failure (a resource two libraries provide, say)
 * is an error of its own, not "no credential map".
 */
String credentialMapText(String service) {
    def path = "${RESOURCES}/credentials/${service}.json"
    try {
        return libraryResource(path)
    } catch (Exception failure) {
        if ((failure.message ?: '').contains('No such library resource')) {
            return null
        }
        throw invalid("the credential map ${path} cannot be loaded: ${failure.message}")
    }
}

/**
 * One deployment of a request, and the credentials it needs bound:
 * [deployment: Map, credentials: List<Map>].
 */
Map deployment(String step, Map config) {
    // No default environment: a staging deploy must never bind production's credentials.
    def args = arguments(step, config, DEPLOYMENT_DEFAULTS, ['service', 'hosts', 'environment'])
    expect(step, 'service', args.service, String, false)
    expect(step, 'hosts', args.hosts, List, false)
    def map = args.credentialMap != null ? args.credentialMap : credentialMap(args.service)
    // The catalog every run hands the binary: its services need no target, restart or verify.
    def catalog = readJSON(text: libraryResource(CATALOG), returnPojo: true)
    return buildDeployment(step, args, map, catalog, env?.HOSTENV_KNOWN_HOSTS as String)
}

/**
 * The deployment and its credentials from the step's arguments over the
 * credential map's environment. The hosts' keys come from the step's
 * `knownHosts` or `knownHostsCredential`, else the map's, else
 * `agentKnownHosts` (HOSTENV_KNOWN_HOSTS, a file the admin provisions), never
 * the agent user's ~/.ssh/known_hosts, which every build on the agent can write.
 */
@NonCPS
Map buildDeployment(String step, Map args, Map map, Map catalog, String agentKnownHosts = null) {
    def known = catalog.services.keySet()
    if (!known.contains(args.service) && (args.target == null || args.restart == null || args.verify == null)) {
        throw invalid("${step}: argument 'service': '${args.service}' is not in the library's catalog (${known.join(', ')}), so 'target', 'restart' and 'verify' are required")
    }
    for (def name : ['credentials', 'optional', 'purgeBackupsOf', 'verify']) {
        expect(step, name, args[name], List)
    }
    for (def name : ['values', 'target', 'restart', 'rollout', 'jump', 'credentialMap']) {
        expect(step, name, args[name], Map)
    }
    def environment = map?.environments?.get(args.environment)
    if (map != null && environment == null) {
        throw invalid("${step}: argument 'environment': the credential map of '${args.service}' has no environment '${args.environment}' (it has: ${map.environments.keySet().join(', ')})")
    }
    def contract = args.contract ?: map?.contract
    if (!contract) {
        throw invalid("${step}: argument 'contract' is required: the library has no credential map for '${args.service}'")
    }
    def credentials = args.credentials != null ? args.credentials : (environment?.credentials ?: [])
    def values = args.values != null ? args.values : (environment?.values ?: [:])
    def optional = args.optional != null ? args.optional : (environment?.optional ?: [])
    def sshCredential = args.sshCredential ?: environment?.sshCredential
    def sshCertificate = args.sshCertificate ?: environment?.sshCertificate
    def sshUser = args.sshUser ?: environment?.sshUser
    def knownHosts = null
    def knownHostsCredential = null
    if (args.knownHosts || args.knownHostsCredential) {
        (knownHosts, knownHostsCredential) = [args.knownHosts, args.knownHostsCredential]
    } else if (environment?.knownHosts || environment?.knownHostsCredential) {
        (knownHosts, knownHostsCredential) = [environment.knownHosts, environment.knownHostsCredential]
    } else {
        knownHosts = agentKnownHosts ?: null
    }
    if (knownHosts && knownHostsCredential) {
        throw invalid("${step}: give 'knownHosts' (a file on the agent) or 'knownHostsCredential' (a secret file credential), not both")
    }

    def env = [:]
    def bound = []
    for (def credential : credentials) {
        checkCredential(step, credential)
        def variable = variableFor(credential.id)
        if (credential.type == 'string') {
            env[credential.key] = [secretEnv: variable, credentialId: credential.id]
        } else if (credential.type == 'file') {
            env[credential.key] = [secretFileEnv: variable, credentialId: credential.id]
        } else if (credential.type == 'usernamePassword') {
            env[credential.usernameKey] = [secretEnv: variable + '_USERNAME', credentialId: credential.id]
            env[credential.passwordKey] = [secretEnv: variable + '_PASSWORD', credentialId: credential.id]
        } else {
            throw invalid("${step}: credential '${credential.id}' is an sshUserPrivateKey; give it as 'sshCredential'")
        }
        bound << (credential + [variable: variable])
    }
    for (def entry : values.entrySet()) {
        if (env.containsKey(entry.key)) {
            throw invalid("${step}: argument 'values': '${entry.key}' also has a credential")
        }
        env[entry.key] = [value: entry.value as String]
    }

    def ssh = [:]
    if (sshCredential) {
        def variable = variableFor(sshCredential)
        bound << [id: sshCredential, type: 'sshUserPrivateKey', variable: variable, ssh: true]
        ssh.identityFileEnv = variable
        // Bound empty when the key has no passphrase; hostenv reads that as none.
        ssh.passphraseEnv = variable + '_PASSPHRASE'
        // The key credential's own username is the login user unless one is given.
        if (!sshUser) { ssh.userEnv = variable + '_USERNAME' }
    }
    if (knownHostsCredential) {
        // A known_hosts file kept as a secret file credential: bound for the run like the key.
        def variable = variableFor(knownHostsCredential as String)
        bound << [id: knownHostsCredential, type: 'file', variable: variable, ssh: true]
        ssh.knownHostsFileEnv = variable
    }
    if (sshCertificate) {
        // An OpenSSH user certificate for the key, kept as a secret file credential.
        def variable = variableFor(sshCertificate)
        bound << [id: sshCertificate, type: 'file', variable: variable, ssh: true]
        ssh.certificateFileEnv = variable
    }
    if (sshUser) { ssh.user = sshUser }
    if (knownHosts) { ssh.knownHosts = knownHosts }
    if (args.hostKeyPolicy) { ssh.hostKeyPolicy = args.hostKeyPolicy }
    if (args.sudo) { ssh.sudo = args.sudo }
    if (args.jump) { ssh.jump = args.jump }

    def deployment = [service: args.service, contract: contract, environment: args.environment,
                      hosts: args.hosts, env: env]
    if (optional) { deployment.optional = optional }
    if (ssh) { deployment.ssh = ssh }
    for (def name : ['target', 'verify', 'rollout', 'rollbackOnFailure', 'allowSharedChange', 'purgeBackupsOf', 'deadlineMs']) {
        if (args[name] != null) { deployment[name] = args[name] }
    }
    def restart = args.restart != null ? [:] + args.restart : [:]
    if (args.restartForce != null) { restart.force = args.restartForce }
    if (restart) { deployment.restart = restart }
    return [deployment: deployment, credentials: bound]
}

@NonCPS
void checkCredential(String step, def credential) {
    if (!(credential instanceof Map) || !credential.id) {
        throw invalid("${step}: argument 'credentials': each entry is a map with an 'id', e.g. [id: 'voxbridge-jwt-secret', key: 'JWT_SECRET', type: 'string']")
    }
    if (!CREDENTIAL_TYPES.contains(credential.type)) {
        throw invalid("${step}: argument 'credentials': '${credential.id}' has type '${credential.type}'; use one of ${CREDENTIAL_TYPES.join(', ')}")
    }
    def needs = credential.type == 'usernamePassword' ? ['usernameKey', 'passwordKey'] : ['key']
    for (def field : needs) {
        if (credential.type != 'sshUserPrivateKey' && !credential[field]) {
            throw invalid("${step}: argument 'credentials': '${credential.id}' needs '${field}'")
        }
    }
}

/** The environment variable a credential is bound to: a plain name made from its id. */
@NonCPS
String variableFor(String id) {
    return 'HOSTENV_CRED_' + id.toUpperCase().replaceAll('[^A-Z0-9]', '_')
}

/**
 * The request's audit block: which build, and who is answerable for it: the
 * approver an `input` step recorded (`approvedBy`), else the user who started
 * the build (its user cause, no extra plugin), else `jenkins`.
 */
Map audit(def environment, String approvedBy) {
    def by = approvedBy
    if (!by) {
        def causes = currentBuild.getBuildCauses('hudson.model.Cause$UserIdCause')
        by = causes ? causes[0].userId : null
    }
    def audit = [by: by ?: 'jenkins']
    if (environment?.BUILD_URL) { audit.buildUrl = environment.BUILD_URL }
    return audit
}

/**
 * The pinned SHA-256s of the two programs, [hostenv, hostenv-host], from
 * HOSTENV_SHA256 and HOSTENV_HOST_SHA256 (the hashes of their lines in the release's
 * SHA256SUMS); a step runs no program without them.
 */
List pins(String action) {
    def hostenvPin = (env?.HOSTENV_SHA256 ?: '') as String
    def hostPin = (env?.HOSTENV_HOST_SHA256 ?: '') as String
    if (!(hostenvPin ==~ /[0-9a-f]{64}/) || !(hostPin ==~ /[0-9a-f]{64}/)) {
        error("hostenv ${action}: set HOSTENV_SHA256 and HOSTENV_HOST_SHA256 to the SHA-256s of hostenv and hostenv-host (the hashes alone, the first field of their lines in the release's SHA256SUMS): every step checks both programs before it runs one; nothing was bound")
    }
    return [hostenvPin, hostPin]
}

/**
 * The binary: the step's `binary`, else HOSTENV_BIN, else the pinned release
 * fetched from HOSTENV_RELEASE_URL (verified with HOSTENV_RELEASE_SHA256), else
 * `hostenv` on PATH. Whichever it is, every script that runs it checks it
 * against HOSTENV_SHA256 first.
 */
String binaryPath(String action, Map options, String work, List pinned) {
    if (options.binary || env?.HOSTENV_BIN || !env?.HOSTENV_RELEASE_URL) {
        return options.binary ?: (env?.HOSTENV_BIN ?: 'hostenv')
    }
    if (!env?.HOSTENV_RELEASE_SHA256) {
        error("hostenv ${action}: HOSTENV_RELEASE_URL is set without HOSTENV_RELEASE_SHA256; the library fetches no binary it cannot verify")
    }
    def url = (env.HOSTENV_RELEASE_URL as String).replace('{version}', BINARY_VERSION)
    def status
    withEnv(["HOSTENV_URL=${url}", "HOSTENV_ARCHIVE_SHA256=${env.HOSTENV_RELEASE_SHA256}",
             "HOSTENV_VERSION=${BINARY_VERSION}", "HOSTENV_WORK=${work}",
             "HOSTENV_PIN=${pinned[0]}", "HOSTENV_HOST_PIN=${pinned[1]}"]) {
        status = sh(script: PROVISION_SCRIPT, returnStatus: true, label: 'hostenv provision')
    }
    if (status != 0) {
        error("hostenv ${action}: cannot provision hostenv ${BINARY_VERSION} from ${url} (exit ${status}${status == 3 ? ': wrong SHA-256' : ''}); nothing was bound")
    }
    return readFile(file: "${work}/binary").trim()
}

/**
 * A step taking a Deploy request, or a Rotation when `deployments` is given.
 * `own` are the step's own arguments (with defaults) that become run options.
 */
Map requestStep(String step, String action, Map config, Map own) {
    def built = checked {
        def request = buildRequest(step, config, own)
        if (action != 'check') {
            requireKnownHosts(step, request.request)
        }
        return request
    }
    def options = built.args
    if (options.planKey) {
        // The plan digest's key is a credential like any other: bound for the run, never seen.
        def variable = variableFor(options.planKey)
        built.credentials << [id: options.planKey, type: 'string', variable: variable]
        options = options + [planKeyEnv: variable]
    }
    return execute(action, built.request, built.credentials, options)
}

// What a repository's `.hostenv/<service>.json` may set: tuning that can
// neither send a secret somewhere else nor bind another credential. A pull
// request's workspace holds its own copy of the file, so anything that routes
// (hosts, a bastion, host keys, a target path, units to restart) or picks
// credentials stays with the Jenkinsfile's step arguments and the library.
@groovy.transform.Field
static final List REPOSITORY_SETTINGS = ['contract', 'optional', 'rollout', 'restart', 'restartForce',
                                         'verify', 'rollbackOnFailure', 'deadlineMs', 'purgeBackupsOf']

// Where a setting a repository file may not give belongs instead.
@groovy.transform.Field
static final Map REPOSITORY_REFUSED = [
    hosts: 'the step\'s `hosts` argument', jump: 'the step\'s `jump` argument',
    knownHosts: 'the library\'s credential map, the step\'s `knownHosts` argument or HOSTENV_KNOWN_HOSTS',
    knownHostsCredential: 'the library\'s credential map or the step\'s `knownHostsCredential` argument',
    hostKeyPolicy: 'the step\'s `hostKeyPolicy` argument',
    sshUser: 'the library\'s credential map or the step\'s `sshUser` argument',
    sudo: 'the step\'s `sudo` argument', target: 'the step\'s `target` argument',
    allowSharedChange: 'the step\'s `allowSharedChange` argument',
    credentials: 'the library\'s credential map', credentialMap: 'the library\'s credential map',
    values: 'the library\'s credential map or the step\'s `values` argument',
    sshCredential: 'the library\'s credential map', sshCertificate: 'the library\'s credential map',
]

/** Throws unless every deployment that reaches hosts names its known_hosts. */
@NonCPS
void requireKnownHosts(String step, Map request) {
    def deployments = request.kind == 'Rotation' ? request.deployments : [request]
    for (def deployment : deployments) {
        if (!deployment.ssh?.knownHosts && !deployment.ssh?.knownHostsFileEnv) {
            throw invalid("${step}: no known_hosts for '${deployment.service}': set 'knownHosts' (a file on the agent) or 'knownHostsCredential' (a secret file credential) in the credential map's environment or the step, or HOSTENV_KNOWN_HOSTS, a file the admin provisions (the agent user's ~/.ssh/known_hosts is writable by every build on the agent)")
        }
    }
}

/**
 * The step's arguments over the repository's own settings for the service,
 * `.hostenv/<service>.json` in the workspace, when there is one: its top-level
 * settings apply to every environment, `environments.<name>` to one, and what
 * the step says wins. The file tunes (REPOSITORY_SETTINGS); it never routes.
 */
Map withRepositorySettings(String step, Map config) {
    if (!(config.service instanceof String) || !(config.service ==~ /[A-Za-z0-9._-]+/)) {
        return config
    }
    def path = ".hostenv/${config.service}.json"
    if (!fileExists(path)) {
        return config
    }
    def file = readJSON(file: path, returnPojo: true)
    return repositoryMerge(step, path, file, config)
}

@NonCPS
Map repositoryMerge(String step, String path, def file, Map config) {
    if (!(file instanceof Map)) {
        throw invalid("${step}: ${path} must be a JSON object")
    }
    def merged = [:]
    def take = { Map settings, String where ->
        for (def entry : settings.entrySet()) {
            repositorySetting(step, where, entry.key as String, entry.value)
            merged[entry.key] = entry.value
        }
    }
    def shared = [:] + file
    def environments = shared.remove('environments') ?: [:]
    if (!(environments instanceof Map)) {
        throw invalid("${step}: ${path}: 'environments' must map environment names to settings")
    }
    take(shared, path)
    def own = environments[config.environment]
    if (own != null) {
        if (!(own instanceof Map)) {
            throw invalid("${step}: ${path}: environments.${config.environment} must be an object")
        }
        take(own, "${path} environments.${config.environment}")
    }
    merged.putAll(config)
    return merged
}

/** Throws, naming the key and where it belongs, unless a repository file may give it. */
@NonCPS
void repositorySetting(String step, String where, String key, def value) {
    def refused = REPOSITORY_REFUSED[key]
    if (refused != null) {
        throw invalid("${step}: ${where}: '${key}' routes secrets or picks credentials, which a repository file may not (a pull request carries its own copy): set it in ${refused}")
    }
    if (!(key in REPOSITORY_SETTINGS)) {
        throw invalid("${step}: ${where}: '${key}' is not a setting a repository can give (it may give: ${REPOSITORY_SETTINGS.join(', ')})")
    }
    if (key == 'restart' && value instanceof Map && !(value.keySet() - ['force', 'timeoutMs']).isEmpty()) {
        throw invalid("${step}: ${where}: 'restart' may hold only 'force' and 'timeoutMs' here; the units root restarts are set in the step's `restart` argument")
    }
    if (key == 'verify' && value instanceof List) {
        for (def check : value) {
            def url = check instanceof Map ? (check.url as String) : null
            if (url == null || !(url ==~ /http:\/\/\{host\}([:\/].*)?/)) {
                throw invalid("${step}: ${where}: a 'verify' url here must check the deployed host itself (http://{host}...), not ${url}; set others in the step's `verify` argument")
            }
        }
    }
}

/** [request: Map, credentials: List, args: Map] from a step's arguments. */
Map buildRequest(String step, Map config, Map own) {
    def rotation = config.deployments != null
    if (!rotation) {
        config = withRepositorySettings(step, config)
    }
    def defaults = [:] + own
    if (rotation) {
        defaults.putAll([shared: [], overlap: [], deployments: null, environment: null])
    } else {
        defaults.putAll(DEPLOYMENT_DEFAULTS)
    }
    def args = arguments(step, config, defaults,
                         rotation ? ['deployments', 'environment'] : ['service', 'hosts', 'environment'])
    def request
    def credentials = []
    if (rotation) {
        expect(step, 'deployments', args.deployments, List, false)
        expect(step, 'shared', args.shared, List)
        expect(step, 'overlap', args.overlap, List)
        def deployments = []
        for (int i = 0; i < args.deployments.size(); i++) {
            def entry = args.deployments[i]
            expect(step, "deployments[${i}]", entry, Map, false)
            def where = "${step} deployments[${i}]"
            def one = deployment(where, withRepositorySettings(where, [environment: args.environment] + entry))
            deployments << one.deployment
            credentials.addAll(one.credentials)
        }
        request = [apiVersion: API_VERSION, kind: 'Rotation', shared: args.shared, deployments: deployments]
        if (args.overlap) { request.overlap = args.overlap }
    } else {
        def one = deployment(step, pick(args, DEPLOYMENT_DEFAULTS))
        request = [apiVersion: API_VERSION, kind: 'Deploy'] + one.deployment
        credentials = one.credentials
    }
    stampAudit(request, args.approvedBy)
    return [request: request, credentials: credentials, args: args]
}

/**
 * `hostenvRequest`: the request a step with these arguments would send,
 * written to `output` in the workspace (pretty JSON) and returned. Secrets
 * are in it only as references (the variables their credentials would be
 * bound to), so it is no secret itself; nothing is bound and no program runs.
 * It is what `hostenv sudoers` and `hostenv host-install` need on the hosts:
 * the same service, environment and settings as the real run.
 */
Map writeRequest(String step, Map config) {
    def built = checked {
        def rest = [:] + config
        def output = rest.remove('output')
        if (!(output instanceof String) || !(output ==~ /[A-Za-z0-9._\/-]+\.json/) || output.startsWith('/') || output.split('/').contains('..')) {
            throw invalid("${step}: argument 'output' must be a relative path in the workspace ending in .json (letters, digits, '.', '_', '-', '/'; no '..')")
        }
        return [output: output] + buildRequest(step, rest, [:])
    }
    writeFile(file: built.output, text: JsonOutput.prettyPrint(JsonOutput.toJson(built.request)) + '\n')
    def services = built.request.kind == 'Rotation' ? built.request.deployments*.service : [built.request.service]
    echo("hostenvRequest: wrote ${built.output} (${built.request.kind} of ${services.join(', ')}): run `hostenv sudoers --request ${built.output}` and, as root, `hostenv host-install --request ${built.output}` with the library's catalog (--catalog resources/io/hostenv/catalog.json)")
    return built.request
}

/** A BuildEnv request: every value a literal. */
@NonCPS
Map buildEnvRequest(Map args) {
    def env = [:]
    for (def entry : args.values.entrySet()) {
        env[entry.key] = [value: entry.value as String]
    }
    def request = [apiVersion: API_VERSION, kind: 'BuildEnv', contract: args.contract, env: env,
                   output: args.output]
    if (args.from) { request.from = args.from }
    if (args.optional) { request.optional = args.optional }
    if (args.mode) { request.mode = args.mode }
    return request
}

/** The entries of `args` whose names `defaults` has. */
@NonCPS
Map pick(Map args, Map defaults) {
    def picked = [:]
    for (def entry : args.entrySet()) {
        if (defaults.containsKey(entry.key)) { picked[entry.key] = entry.value }
    }
    return picked
}

/** Every deployment of the request records this build. */
void stampAudit(Map request, String approvedBy) {
    def stamp = audit(env, approvedBy)
    if (request.kind == 'Rotation') {
        for (def deployment : request.deployments) { deployment.audit = stamp }
    } else {
        request.audit = stamp
    }
}

/**
 * Runs `hostenv <action>` on `request` with `credentials` bound and returns the
 * result map. Options: binary, junit, to, planKeyEnv, expectPlan, bind (false:
 * a check that binds nothing at all and reads no secret).
 */
Map execute(String action, Map request, List credentials, Map options) {
    def work = "${pwd(tmp: true)}/hostenv-${UUID.randomUUID()}"
    def junitFile = "${REPORTS}/${action}-${UUID.randomUUID()}.xml"
    try {
        def pinned = pins(action)
        def binary = binaryPath(action, options, work, pinned)
        checkBinary(action, binary, work, pinned)
        // A rollback puts back files the hosts hold, and a backups listing reads
        // them: they need the SSH key and no secret. A check contacts no host: it needs no SSH key (and says so
        // with --ssh-unbound, so only the ssh settings' shape is checked), and
        // with `bind: false` no credential at all (--secrets-unbound).
        def unbound = action == 'check' && options.bind == false
        def needed = credentials
        if (action in ['rollback', 'backups']) { needed = sshOnly(credentials, true) }
        if (action == 'check') { needed = unbound ? [] : sshOnly(credentials, false) }
        def clash = variableClash(needed)
        if (clash) {
            error("hostenv ${action}: ${clash}")
        }
        def bindings = []
        def seen = [] as Set
        for (def credential : needed) {
            if (seen.add(credential.id)) {
                bindings << credentialBinding(credential)
            }
        }
        def text = JsonOutput.toJson(request)
        if (text.length() > MAX_REQUEST_CHARS) {
            error("hostenv ${action}: the request is ${text.length()} characters; a step hands at most ${MAX_REQUEST_CHARS} to the binary (through its environment): split the deployment")
        }
        def status
        withEnv(["HOSTENV_BINARY=${binary}", "HOSTENV_ACTION=${action}", "HOSTENV_WORK=${work}",
                 "HOSTENV_PIN=${pinned[0]}", "HOSTENV_HOST_PIN=${pinned[1]}", "HOSTENV_REQUEST=${text}",
                 "HOSTENV_CATALOG=${libraryResource(CATALOG)}",
                 "HOSTENV_JUNIT=${pwd()}/${junitFile}", "HOSTENV_TO=${options.to ?: ''}",
                 "HOSTENV_UNBOUND=${unbound ? 'yes' : ''}",
                 "HOSTENV_PLAN_KEY_ENV=${options.planKeyEnv ?: ''}", "HOSTENV_EXPECT_PLAN=${options.expectPlan ?: ''}"]) {
            withCredentials(bindings) {
                status = sh(script: RUN_SCRIPT, returnStatus: true, label: 'hostenv ' + action)
            }
        }
        refuseUnpinned(action, binary, status)
        return conclude(action, status, work, junitFile, options)
    } finally {
        cleanup(work, "${pwd()}/${junitFile}")
    }
}

/** Fails the build, naming the program, when a script refused it for its digest. */
void refuseUnpinned(String action, String binary, int status) {
    if (status == NOT_PINNED) {
        error("hostenv ${action}: `${binary}` does not have the SHA-256 HOSTENV_SHA256 pins (it was replaced since it was checked?); it was not run")
    }
}

/** Removes a step's scratch directory and its (published) JUnit file. */
void cleanup(String work, String junitFile) {
    withEnv(["HOSTENV_WORK=${work}", "HOSTENV_JUNIT=${junitFile}"]) {
        sh(script: CLEANUP_SCRIPT, returnStatus: true, label: 'hostenv cleanup')
    }
}

/** Every variable a credential binds, by whole name. */
@NonCPS
List variablesOf(Map credential) {
    if (credential.type == 'usernamePassword') {
        return [credential.variable + '_USERNAME', credential.variable + '_PASSWORD']
    }
    if (credential.type == 'sshUserPrivateKey') {
        return [credential.variable, credential.variable + '_PASSPHRASE', credential.variable + '_USERNAME']
    }
    return [credential.variable]
}

/**
 * Why two credentials would bind the same variable (one value would silently
 * replace the other), naming both; null when every name is unique.
 */
@NonCPS
String variableClash(List credentials) {
    def owners = [:]
    for (def credential : credentials) {
        for (def name : variablesOf(credential)) {
            def owner = owners[name]
            if (owner != null && owner != credential.id) {
                return "credentials '${owner}' and '${credential.id}' would both bind the variable ${name}; rename one"
            }
            owners[name] = credential.id
        }
    }
    return null
}

/** `hostenv lint` of `path`, checking the credential maps of `services` too. */
Map lint(String path, List services, Map options) {
    def work = "${pwd(tmp: true)}/hostenv-${UUID.randomUUID()}"
    def junitFile = "${REPORTS}/lint-${UUID.randomUUID()}.xml"
    try {
        def pinned = pins('lint')
        def binary = binaryPath('lint', options, work, pinned)
        checkBinary('lint', binary, work, pinned)
        for (def service : services) {
            def text = credentialMapText(service)
            if (text == null) {
                error("hostenvLint: argument 'services': the library has no credential map for '${service}'")
            }
            writeFile(file: "${work}/maps/${service}.json", text: text)
        }
        def status
        withEnv(["HOSTENV_BINARY=${binary}", "HOSTENV_WORK=${work}", "HOSTENV_LINT_PATH=${path}",
                 "HOSTENV_PIN=${pinned[0]}", "HOSTENV_JUNIT=${pwd()}/${junitFile}"]) {
            status = sh(script: LINT_SCRIPT, returnStatus: true, label: 'hostenv lint')
        }
        refuseUnpinned('lint', binary, status)
        return conclude('lint', status, work, junitFile, options)
    } finally {
        cleanup(work, "${pwd()}/${junitFile}")
    }
}

/**
 * Fails before any credential is bound unless the binary has its pinned
 * SHA-256, runs, speaks this library's protocol and is the pinned version
 * (the catalog is not the binary's: every run hands it the library's).
 * Makes the scratch directory (0700) on the way.
 */
void checkBinary(String action, String binary, String work, List pinned) {
    def status
    withEnv(["HOSTENV_BINARY=${binary}", "HOSTENV_WORK=${work}", "HOSTENV_PIN=${pinned[0]}"]) {
        status = sh(script: VERSION_SCRIPT, returnStatus: true, label: 'hostenv version')
    }
    if (status == NOT_PINNED) {
        error("hostenv ${action}: the hostenv binary `${binary}` does not have the SHA-256 HOSTENV_SHA256 pins; nothing was bound")
    }
    if (status != 0) {
        error("hostenv ${action}: the hostenv binary `${binary}` does not run (exit ${status}); set the step's `binary`, HOSTENV_BIN, or put hostenv on the agent's PATH")
    }
    def version = null
    try {
        version = readJSON(file: "${work}/version.json", returnPojo: true)
    } catch (Exception unreadable) {
        version = null
    }
    def speaks = version instanceof Map ? version.apiVersions : null
    if (!(speaks instanceof List) || !speaks.contains(API_VERSION)) {
        error("hostenv ${action}: the hostenv binary `${binary}` speaks ${speaks ?: 'no known protocol'}; this library needs ${API_VERSION}")
    }
    if (version.version != BINARY_VERSION) {
        error("hostenv ${action}: the hostenv binary `${binary}` is version ${version.version}; this library is pinned to ${BINARY_VERSION}")
    }
}

/** The credentials that reach hosts (the SSH key and its certificate), or all the others. */
@NonCPS
List sshOnly(List credentials, boolean wanted) {
    def picked = []
    for (def credential : credentials) {
        if ((credential.ssh == true) == wanted) { picked << credential }
    }
    return picked
}

def credentialBinding(Map credential) {
    if (credential.type == 'string') {
        return string(credentialsId: credential.id, variable: credential.variable)
    }
    if (credential.type == 'file') {
        return file(credentialsId: credential.id, variable: credential.variable)
    }
    if (credential.type == 'usernamePassword') {
        return usernamePassword(credentialsId: credential.id,
                                usernameVariable: credential.variable + '_USERNAME',
                                passwordVariable: credential.variable + '_PASSWORD')
    }
    return sshUserPrivateKey(credentialsId: credential.id, keyFileVariable: credential.variable,
                             passphraseVariable: credential.variable + '_PASSPHRASE',
                             usernameVariable: credential.variable + '_USERNAME')
}

/** Publishes the JUnit file, echoes a summary, and ends the step as the exit code says. */
Map conclude(String action, int status, String work, String junitFile, Map options) {
    def result = null
    if (fileExists("${work}/result.json")) {
        try {
            result = readJSON(file: "${work}/result.json", returnPojo: true)
        } catch (Exception unreadable) {
            result = null
        }
    }
    if (options.junit && fileExists(junitFile)) {
        junit(testResults: junitFile, allowEmptyResults: true)
    }
    if (!(result instanceof Map)) {
        error("hostenv ${action}: the binary exited ${status} without a result")
    }
    echo(summary(action, result))
    def message = result.error?.message ?: ''
    if (status == 0) {
        return result
    }
    if (status == 4) {
        // Pending changes are what a plan is for; drift and findings want attention.
        if (action in ['drift', 'lint']) {
            unstable("hostenv ${action}: ${message ?: 'differences found'}")
        }
        return result
    }
    if (status == 2) {
        error("hostenv ${action}: the request was rejected: ${message}${keyProblems(result)}")
    }
    if (status == 3) {
        error("hostenv ${action}: A HOST NEEDS A PERSON (exit 3): ${message}")
    }
    if (status == 1) {
        error("hostenv ${action} failed: ${message}")
    }
    error("hostenv ${action}: unexpected exit ${status}: ${message}")
    return result
}

/** `; keys: JWT_SECRET (unset), ...` for a rejection with key problems, else ''. */
@NonCPS
String keyProblems(Map result) {
    def contracts = []
    if (result.contract) { contracts << result.contract }
    for (def deployment : (result.deployments ?: [])) { contracts << deployment.contract }
    def problems = []
    for (def contract : contracts) {
        for (def key : (contract?.keys ?: [])) {
            if (!(key.status in ['ok', 'omitted'])) {
                problems << "${key.name}${key.host ? ' on ' + key.host : ''} (${key.status})"
            }
        }
    }
    return problems ? "; keys: ${problems.join(', ')}" : ''
}

/**
 * `hostenvBackups`: a host's current file and each backup, with what putting
 * it back would change. Names and times only.
 */
@NonCPS
List backupLines(Map listing) {
    if (listing == null) { return [] }
    def lines = [listing.current ? "now: written ${listing.current.writtenAt}" : 'now: no file']
    if (!listing.kept) { lines << 'no backups' }
    for (def backup : (listing.kept ?: [])) {
        def keys = backup.keys
        def changes = []
        if (keys.added) { changes << "adds ${keys.added.join(', ')}" }
        if (keys.removed) { changes << "removes ${keys.removed.join(', ')}" }
        if (keys.changed) { changes << "changes ${keys.changed.join(', ')}" }
        if (keys.unnamed) { changes << "${keys.unnamed} names that are no key names differ" }
        lines << "backup ${backup.number}, written ${backup.writtenAt}: ${changes ? changes.join('; ') : 'the same keys and values'}"
    }
    return lines
}

/** A few lines for the build log: each host's status, or each lint finding. Names only. */
@NonCPS
String summary(String action, Map result) {
    def lines = []
    def groups = result.deployments ?: [[service: result.service, hosts: result.hosts]]
    for (def group : groups) {
        for (def host : (group.hosts ?: [])) {
            def changed = host.keys ? (host.keys.added + host.keys.changed + host.keys.removed) : []
            def detail = changed ? " (keys: ${changed.join(', ')})" : ''
            def error = host.error ? " - ${host.error.kind}: ${host.error.message}" : ''
            lines << "  ${group.service ? group.service + ' ' : ''}${host.host}: ${host.status}${detail}${error}"
            for (def line : backupLines(host.backups)) { lines << "    ${line}" }
        }
    }
    for (def finding : (result.findings ?: [])) {
        lines << "  ${finding.file}${finding.line ? ':' + finding.line : ''}: ${finding.message}"
    }
    def head = "hostenv ${action}: ${result.ok ? 'ok' : (result.error?.kind ?: 'failed')}"
    return ([head] + lines).join('\n')
}
