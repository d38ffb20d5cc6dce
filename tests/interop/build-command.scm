;;; build-command.scm -- builds through the `guix' command itself: `guix
;;; build /gnu/store/...drv' for a derivation made here, then `guix build
;;; --log-file' for it and the stored log's text; and the same for a
;;; derivation whose builder fails.

(load (string-append (dirname (current-filename)) "/build-common.scm"))

(define s (connect))
(set-build-options s #:use-substitutes? #f #:verbosity 1)
(define bb (add-busybox! s))

(define (guix . args)
  "Run `guix ARGS...'; return its exit status and standard output."
  (apply command-output "guix" args))

(define (relative-to-log-dir file)
  "FILE without the log directory in front, so transcripts compare."
  (let ((dir (string-append (getenv "GUIX_LOG_DIRECTORY") "/")))
    (if (string-prefix? dir file)
        (string-drop file (string-length dir))
        file)))

(define (guix-build! label drv)
  "Run `guix build' on DRV's file and then `guix build --log-file'; record
their statuses and outputs and the stored log."
  (let-values (((status out) (guix "build" "--no-substitutes" (drv-file drv))))
    (record! (string-append label ": guix build")
             `(("status" . ,status) ("stdout" . ,out)))
    (let-values (((log-status log-out)
                  (guix "build" "--log-file" (drv-file drv))))
      (record! (string-append label ": guix build --log-file")
               `(("status" . ,log-status)
                 ("stdout" . ,(relative-to-log-dir log-out))))
      (let ((text (stored-log s (drv-file drv))))
        (record! (string-append label ": stored log") (or text 'null))
        (check! (string-append label ": --log-file names the stored log")
                (equal? (string-trim-right log-out)
                        (or (log-file s (drv-file drv)) ""))
                log-out)
        (values status out text)))))

(define hello
  (sh-derivation s bb "hello-command"
                 "echo building hello; mkdir $out; echo hello > $out/greeting"))
(let-values (((status out text) (guix-build! "hello" hello)))
  (check! "hello: guix build succeeded" (zero? status) status)
  (check! "hello: prints the output"
          (equal? out (string-append (derivation->output-path hello) "\n"))
          out)
  (check! "hello: the stored log has the builder's output"
          (and text (string-contains text "building hello")) text))
(record-outputs! "hello" s hello)

(define broken
  (sh-derivation s bb "broken-command" "echo about to fail; exit 7"))
(let-values (((status out text) (guix-build! "broken" broken)))
  (check! "broken: guix build failed" (not (zero? status)) status)
  (check! "broken: the stored log has the builder's output"
          (and text (string-contains text "about to fail")) text))

(step-alive! "alive at the end" s #t)
(finish!)
